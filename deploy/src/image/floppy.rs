//! The parameters floppy of virtual-media boot: a 1.44 MB FAT12 image,
//! labelled `ir-vfd-dev` (the label the deploy ramdisk looks for), with a
//! `parameters.txt` of `key=value` lines — the agent token among them
//! (`ipa-agent-token`), so the ramdisk never has to ask for one.
//!
//! Built in memory with `fatfs`, root-directory files only (fatfs 0.3.6
//! writes subdirectories that `fsck.fat` rejects, so they are refused here
//! with a clear error). The same inputs always give the same bytes: fixed
//! timestamps (the DOS epoch) and a volume id derived from the content —
//! a take-over rebuilds a byte-identical floppy.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};

use sha2::{Digest, Sha256};

/// Size of a 3.5" high-density floppy.
pub const FLOPPY_BYTES: usize = 1_474_560;
/// The volume label the deploy ramdisk finds its parameters by.
pub const FLOPPY_LABEL: &[u8; 11] = b"ir-vfd-dev ";
pub const PARAMETERS_FILE: &str = "parameters.txt";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FloppyError {
    #[error(
        "floppy file name {0:?} is not allowed: only files in the root directory, no '/' or '\\\\', 1-255 characters"
    )]
    BadName(String),
    #[error("duplicate floppy file name {0:?}")]
    Duplicate(String),
    #[error("the files need {needed} bytes but a floppy holds about {capacity}")]
    TooLarge { needed: usize, capacity: usize },
    #[error("parameter {0:?}: keys must be non-empty without '=', whitespace or newlines, values without newlines")]
    BadParameter(String),
    #[error("building the FAT image failed: {0}")]
    Fat(String),
}

/// A FAT12 floppy with `files` (name, content) in its root directory.
pub fn create_vfat_image(files: &[(&str, &[u8])]) -> Result<Vec<u8>, FloppyError> {
    let mut names = std::collections::HashSet::new();
    for (name, _) in files {
        let bad =
            name.is_empty() || name.len() > 255 || name.contains(['/', '\\', '\0']) || *name == "." || *name == "..";
        if bad {
            return Err(FloppyError::BadName(name.to_string()));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(FloppyError::Duplicate(name.to_string()));
        }
    }
    // 2847 data clusters of 512 bytes; leave room for directory growth
    let capacity = 2847 * 512 - 16 * 512;
    let needed: usize = files.iter().map(|(_, c)| c.len().div_ceil(512) * 512).sum();
    if needed > capacity {
        return Err(FloppyError::TooLarge { needed, capacity });
    }
    let fat = |e: std::io::Error| FloppyError::Fat(e.to_string());
    let mut disk = Cursor::new(vec![0u8; FLOPPY_BYTES]);
    let mut id = Sha256::new();
    for (name, content) in files {
        id.update(name.as_bytes());
        id.update([0]);
        id.update(content);
    }
    let d = id.finalize();
    let opts = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat12)
        .bytes_per_sector(512)
        .total_sectors(2880)
        .bytes_per_cluster(512)
        .fats(2)
        .max_root_dir_entries(224)
        .media(0xF0)
        .sectors_per_track(18)
        .heads(2)
        .volume_id(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
        .volume_label(*FLOPPY_LABEL);
    fatfs::format_volume(&mut disk, opts).map_err(fat)?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(fat)?;
        let root = fs.root_dir();
        for (name, content) in files {
            let mut f = root.create_file(name).map_err(fat)?;
            f.truncate().map_err(fat)?;
            f.write_all(content).map_err(fat)?;
        }
        drop(root);
        fs.unmount().map_err(fat)?;
    }
    Ok(disk.into_inner())
}

/// The parameters floppy: `parameters.txt` with one `key=value` per line,
/// sorted by key.
pub fn parameters_floppy(params: &BTreeMap<String, String>) -> Result<Vec<u8>, FloppyError> {
    let mut text = String::new();
    for (k, v) in params {
        if k.is_empty() || k.contains(['=', '\n', '\r', ' ', '\t']) || v.contains(['\n', '\r']) {
            return Err(FloppyError::BadParameter(k.clone()));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    create_vfat_image(&[(PARAMETERS_FILE, text.as_bytes())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tool(name: &str) -> Command {
        let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().map(|o| o.status.success());
        assert!(found.unwrap_or(false), "{name} is missing: scripts/deps.sh installs mtools and dosfstools");
        let mut c = Command::new(name);
        c.env("MTOOLS_SKIP_CHECK", "1");
        c
    }

    fn write(img: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(img).unwrap();
        f
    }

    fn params() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ipa-agent-token".to_string(), "JG8YypQNRCC1x-g854bpQfQWXj_Au-0aFk_RO4APdV4".to_string()),
            ("ipa-api-url".to_string(), "http://10.0.0.1:6385".to_string()),
            ("boot_method".to_string(), "vmedia".to_string()),
        ])
    }

    #[test]
    fn parameters_floppy_passes_fsck_and_mtools_reads_it() {
        let img = parameters_floppy(&params()).unwrap();
        assert_eq!(img.len(), FLOPPY_BYTES);
        let f = write(&img);
        let path = f.path().to_str().unwrap();
        let fsck = tool("fsck.fat").args(["-n", path]).output().unwrap();
        assert!(
            fsck.status.success(),
            "fsck.fat: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let out = tool("mtype").args(["-i", path, "::parameters.txt"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "boot_method=vmedia\nipa-agent-token=JG8YypQNRCC1x-g854bpQfQWXj_Au-0aFk_RO4APdV4\nipa-api-url=http://10.0.0.1:6385\n"
        );
        let label = tool("mlabel").args(["-i", path, "-s", "::"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&label.stdout).contains("ir-vfd-dev"),
            "{}",
            String::from_utf8_lossy(&label.stdout)
        );
        let dir = tool("mdir").args(["-i", path, "::"]).output().unwrap();
        assert!(
            String::from_utf8_lossy(&dir.stdout).contains("parameters.txt"),
            "{}",
            String::from_utf8_lossy(&dir.stdout)
        );
    }

    #[test]
    fn several_files_with_long_names_copy_out_byte_exact() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let img = create_vfat_image(&[("a-rather-long-file-name.bin", &big), ("token", b"secret")]).unwrap();
        let f = write(&img);
        let path = f.path().to_str().unwrap();
        assert!(tool("fsck.fat").args(["-n", path]).output().unwrap().status.success());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("copy.bin");
        let st = tool("mcopy").args(["-i", path, "::a-rather-long-file-name.bin"]).arg(&out).output().unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        assert_eq!(std::fs::read(&out).unwrap(), big);
    }

    #[test]
    fn same_inputs_same_bytes() {
        assert_eq!(parameters_floppy(&params()).unwrap(), parameters_floppy(&params()).unwrap());
        let mut other = params();
        other.insert("ipa-agent-token".into(), "another".into());
        assert_ne!(parameters_floppy(&params()).unwrap(), parameters_floppy(&other).unwrap());
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(create_vfat_image(&[("dir/file", b"x")]), Err(FloppyError::BadName("dir/file".into())));
        assert_eq!(create_vfat_image(&[("A", b"x"), ("a", b"y")]), Err(FloppyError::Duplicate("a".into())));
        let huge = vec![0u8; 1_500_000];
        assert!(matches!(create_vfat_image(&[("huge", &huge)]), Err(FloppyError::TooLarge { .. })));
        let bad = BTreeMap::from([("a=b".to_string(), "c".to_string())]);
        assert_eq!(parameters_floppy(&bad), Err(FloppyError::BadParameter("a=b".into())));
        let bad = BTreeMap::from([("k".to_string(), "line\nbreak".to_string())]);
        assert_eq!(parameters_floppy(&bad), Err(FloppyError::BadParameter("k".into())));
    }
}
