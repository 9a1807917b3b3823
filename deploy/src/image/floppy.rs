//! The parameters floppy of virtual-media boot: a 1.44 MB FAT12 image,
//! labelled `ir-vfd-dev` (the label the deploy ramdisk looks for), with a
//! `parameters.txt` of `key=value` lines — the agent token among them
//! (`ipa-agent-token`), so the ramdisk never has to ask for one.
//!
//! Built in memory. Root-directory files (the parameters floppy) with
//! `fatfs`, in the standard 1.44 MB geometry (18 sectors per track, 2
//! heads, 224 root entries); trees with directories (a config-drive style
//! `openstack/latest/...`) with `hadris-fat`, because fatfs 0.3.6 writes
//! subdirectories that `fsck.fat` rejects (see `with_directories`). The
//! same inputs always give the same bytes: fixed timestamps (the DOS
//! epoch) and a volume id derived from the content — a take-over rebuilds
//! a byte-identical floppy.

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
        "floppy file path {0:?} is not allowed: '/'-separated names of 1-255 characters, no '.', '..', '\\\\' or NUL, \
         and no file where another path needs a directory"
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

/// A FAT12 floppy with `files` (path, content). Paths are `/`-separated
/// (`openstack/latest/meta_data.json`); directories are made as needed.
pub fn create_vfat_image(files: &[(&str, &[u8])]) -> Result<Vec<u8>, FloppyError> {
    let mut names = std::collections::HashSet::new();
    for (name, _) in files {
        let bad = name.is_empty()
            || name.len() > 1024
            || name.contains(['\\', '\0'])
            || name.split('/').any(|seg| seg.is_empty() || seg.len() > 255 || seg == "." || seg == "..");
        if bad {
            return Err(FloppyError::BadName(name.to_string()));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(FloppyError::Duplicate(name.to_string()));
        }
    }
    // a path that is a file and also a directory of another file
    for (name, _) in files {
        let dir = format!("{}/", name.to_ascii_lowercase());
        if names.iter().any(|n| n.starts_with(&dir)) {
            return Err(FloppyError::BadName(name.to_string()));
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
    let volume_id = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    if files.iter().any(|(name, _)| name.contains('/')) {
        return with_directories(files, volume_id);
    }
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
        .volume_id(volume_id)
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

enum Tree<'a> {
    Dir(BTreeMap<&'a str, Tree<'a>>),
    File(&'a [u8]),
}

/// Floppies with directories are written by `hadris-fat`, whose
/// subdirectories `fsck.fat` accepts (fatfs 0.3.6 writes LFN entries in
/// front of `.` and `..`). It formats with hard-disk geometry (63 sectors
/// per track, 255 heads, 512 root entries), which Linux and BMCs do not
/// care about, and upper-cases the label and stamps it with the clock: the
/// label is written back as `ir-vfd-dev` (the ramdisk looks it up by that
/// exact name) with zero timestamps, so the bytes stay deterministic.
fn with_directories(files: &[(&str, &[u8])], volume_id: u32) -> Result<Vec<u8>, FloppyError> {
    use hadris_fat::sync::format::{FatFormatOptions, FatTypeSelection, FatVolumeFormatter};
    use hadris_fat::sync::{FatDir, FatVolume, FatVolumeWriteExt};
    let fat = |e: hadris_fat::Error| FloppyError::Fat(e.to_string());

    let mut root = BTreeMap::new();
    for (path, content) in files {
        let segs: Vec<&str> = path.split('/').collect();
        let mut dir = &mut root;
        for seg in &segs[..segs.len() - 1] {
            let entry = dir.entry(*seg).or_insert_with(|| Tree::Dir(BTreeMap::new()));
            dir = match entry {
                Tree::Dir(d) => d,
                Tree::File(_) => return Err(FloppyError::BadName(path.to_string())),
            };
        }
        dir.insert(segs[segs.len() - 1], Tree::File(content));
    }

    fn fill<'a, D: hadris_fat::sync::Read + hadris_fat::sync::Write + hadris_fat::sync::Seek>(
        fs: &'a FatVolume<D>,
        dir: &FatDir<'a, D>,
        tree: &BTreeMap<&str, Tree<'_>>,
    ) -> Result<(), hadris_fat::Error> {
        for (name, node) in tree {
            match node {
                Tree::Dir(children) => {
                    let sub = fs.create_dir(dir, name)?;
                    fill(fs, &sub, children)?;
                }
                Tree::File(content) => {
                    let entry = fs.create_file(dir, name)?;
                    let mut w = fs.write_file(&entry)?;
                    let mut off = 0;
                    while off < content.len() {
                        off += w.write(&content[off..])?;
                    }
                    w.finish()?;
                }
            }
        }
        Ok(())
    }

    let mut disk = Cursor::new(vec![0u8; FLOPPY_BYTES]);
    let options = FatFormatOptions::new(FLOPPY_BYTES as u64)
        .fat_type(FatTypeSelection::Fat12)
        .volume_id(volume_id)
        .volume_label("ir-vfd-dev");
    drop(FatVolumeFormatter::format(&mut disk, options).map_err(fat)?);
    disk.set_position(0);
    {
        static EPOCH: hadris_fat::time::EpochTimeProvider = hadris_fat::time::EpochTimeProvider;
        let fs =
            FatVolume::builder(&mut disk).time_provider(&EPOCH).open().map_err(|e| FloppyError::Fat(e.to_string()))?;
        let root_dir = fs.root_dir();
        fill(&fs, &root_dir, &root).map_err(fat)?;
        fs.sync().map_err(fat)?;
    }
    let mut img = disk.into_inner();
    // the label: in the boot sector's extended BPB and as the root
    // directory's volume-label entry
    img[43..54].copy_from_slice(FLOPPY_LABEL);
    let u16_at = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]) as usize;
    let (reserved, fats, root_entries, per_fat) = (u16_at(14), img[16] as usize, u16_at(17), u16_at(22));
    let root_at = (reserved + fats * per_fat) * 512;
    for slot in 0..root_entries {
        let e = root_at + slot * 32;
        if img[e] == 0 {
            break;
        }
        if img[e + 11] == 0x08 {
            img[e..e + 11].copy_from_slice(FLOPPY_LABEL);
            img[e + 12..e + 32].fill(0);
        }
    }
    Ok(img)
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
        let blkid = tool("blkid").args(["-p", "-s", "LABEL", "-o", "value", path]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "ir-vfd-dev", "the label udev shows the ramdisk");
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
    fn directories_pass_fsck_and_mtools_reads_them_and_the_label_is_exact() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let files: [(&str, &[u8]); 4] = [
            ("openstack/latest/meta_data.json", b"{\"uuid\": \"n1\"}"),
            ("openstack/latest/user_data", &big),
            ("openstack/2012-08-10/meta_data.json", b"{}"),
            ("parameters.txt", b"ipa-agent-token=t\n"),
        ];
        let img = create_vfat_image(&files).unwrap();
        assert_eq!(img.len(), FLOPPY_BYTES);
        let f = write(&img);
        let path = f.path().to_str().unwrap();
        let fsck = tool("fsck.fat").args(["-n", path]).output().unwrap();
        assert!(fsck.status.success(), "fsck.fat: {}", String::from_utf8_lossy(&fsck.stdout));
        for (name, content) in files {
            let out = tool("mtype").args(["-i", path, &format!("::/{name}")]).output().unwrap();
            assert!(out.status.success(), "mtype {name}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stdout == content, "{name} differs");
        }
        let label = tool("mlabel").args(["-i", path, "-s", "::"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "Volume label is ir-vfd-dev");
        // udev's /dev/disk/by-label, where the ramdisk looks, comes from blkid
        let blkid = tool("blkid").args(["-p", "-s", "LABEL", "-o", "value", path]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "ir-vfd-dev");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(create_vfat_image(&files).unwrap() == img, "same inputs, other bytes");
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(create_vfat_image(&[("dir//file", b"x")]), Err(FloppyError::BadName("dir//file".into())));
        assert_eq!(create_vfat_image(&[("../file", b"x")]), Err(FloppyError::BadName("../file".into())));
        assert_eq!(create_vfat_image(&[("a", b"x"), ("a/b", b"y")]), Err(FloppyError::BadName("a".into())));
        assert_eq!(create_vfat_image(&[("A", b"x"), ("a", b"y")]), Err(FloppyError::Duplicate("a".into())));
        let huge = vec![0u8; 1_500_000];
        assert!(matches!(create_vfat_image(&[("huge", &huge)]), Err(FloppyError::TooLarge { .. })));
        let bad = BTreeMap::from([("a=b".to_string(), "c".to_string())]);
        assert_eq!(parameters_floppy(&bad), Err(FloppyError::BadParameter("a=b".into())));
        let bad = BTreeMap::from([("k".to_string(), "line\nbreak".to_string())]);
        assert_eq!(parameters_floppy(&bad), Err(FloppyError::BadParameter("k".into())));
    }
}
