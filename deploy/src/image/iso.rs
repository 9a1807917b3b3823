//! Boot ISOs: ISO 9660 (+ Joliet) with El Torito entries for BIOS
//! (isolinux, no emulation, boot info table) and UEFI (an EFI system
//! partition image holding a GRUB `BOOTX64.EFI` and its `grub.cfg`),
//! carrying a kernel, a ramdisk and the kernel parameters.
//!
//! Layout of the image:
//!
//! ```text
//! /vmlinuz /initrd                      kernel and ramdisk (streamed from their files)
//! /isolinux/isolinux.bin ldlinux.c32    BIOS El Torito default entry
//! /isolinux/isolinux.cfg                KERNEL /vmlinuz INITRD /initrd APPEND <params>
//! /EFI/BOOT/grub.cfg                    also inside efiboot.img, see below
//! /efiboot.img                          UEFI El Torito entry: FAT, /EFI/BOOT/{BOOTX64.EFI,grub.cfg}
//! /FERRIC/<8 hex>.ID                    marker GRUB finds the ISO by
//! ```
//!
//! GRUB is started from the EFI partition image, so its `$root` is either
//! that image or (depending on the firmware's device path) the CD; the
//! same `grub.cfg` is in both places and searches for the marker file to
//! set `$root` to the ISO before loading the kernel.
//!
//! Determinism: the same inputs give the same bytes. The ISO writer stamps
//! volume descriptors and directory records with the current time, so
//! after writing, every such timestamp is reset to 2000-01-01 (a walk over
//! both directory trees); the FAT image uses the DOS epoch and a volume id
//! derived from its content. The content id ([`BootIsoSpec::content_id`])
//! names the ISO: SHA-256 over the kernel's and ramdisk's SHA-256, the
//! parameters and the boot loaders' SHA-256 — nodes deployed from the same
//! image share one ISO.
//!
//! Memory: kernel and ramdisk are streamed into the image in chunks (the
//! writer's `FileSource`), never held whole; the output goes to a
//! temporary file beside the destination and is renamed into place, so a
//! reader never sees half an ISO and a crash leaves no partial one under
//! the final name.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Cursor, Write as _};
use std::num::NonZeroU16;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hadris_iso::boot::options::{BootEntryOptions, BootOptions, BootSectionOptions};
use hadris_iso::boot::{EmulationType, PlatformId};
use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{FileSource, InputEntry, InputEntryKind, InputTree, IsoImageWriter};
use sha2::{Digest, Sha256};

/// Volume label of generated boot ISOs.
pub const VOLUME_LABEL: &str = "FERRIC_BOOT";
/// Linux's `COMMAND_LINE_SIZE` on x86.
pub const MAX_KERNEL_PARAMS: usize = 2048;
/// Bumped whenever the layout changes, so old content ids stop matching.
const LAYOUT_VERSION: &str = "ferric-boot-iso-v1";
const SECTOR: u64 = 2048;
/// 2000-01-01 00:00:00 UTC in the 7-byte directory record format.
const FIXED_DIR_DATE: [u8; 7] = [100, 1, 1, 0, 0, 0, 0];
/// The same instant in the 17-byte volume descriptor format.
const FIXED_VD_DATE: &[u8; 17] = b"2000010100000000\0";
const UNSET_VD_DATE: &[u8; 17] = b"0000000000000000\0";

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("kernel parameters: {0}")]
    BadParams(String),
    #[error("{what} {path}: {source}")]
    Input { what: &'static str, path: String, source: std::io::Error },
    #[error("{what} {path} is empty")]
    EmptyInput { what: &'static str, path: String },
    #[error("writing the ISO to {path}: {message}")]
    Write { path: String, message: String },
    #[error("building the EFI system partition image: {0}")]
    Esp(String),
}

/// The boot loaders a boot ISO carries (config `[deploy] isolinux_bin`,
/// `ldlinux_c32`, `uefi_loader`).
#[derive(Debug, Clone, PartialEq)]
pub struct BootLoaders {
    pub isolinux_bin: PathBuf,
    pub ldlinux_c32: PathBuf,
    /// `None`: the ISO boots by BIOS only.
    pub uefi_loader: Option<PathBuf>,
}

impl BootLoaders {
    pub fn from_config(cfg: &ferric_common::config::DeployConfig) -> BootLoaders {
        BootLoaders {
            isolinux_bin: cfg.isolinux_bin.clone(),
            ldlinux_c32: cfg.ldlinux_c32.clone(),
            uefi_loader: (!cfg.uefi_loader.as_os_str().is_empty()).then(|| cfg.uefi_loader.clone()),
        }
    }
}

/// What goes into one boot ISO.
#[derive(Debug, Clone)]
pub struct BootIsoSpec<'a> {
    pub kernel: &'a Path,
    /// Hex SHA-256 of the kernel, as the image cache computed it.
    pub kernel_sha256: &'a str,
    pub ramdisk: &'a Path,
    pub ramdisk_sha256: &'a str,
    pub kernel_params: &'a str,
    pub loaders: &'a BootLoaders,
}

/// What [`create_boot_iso`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct BootIso {
    pub content_id: String,
    pub size: u64,
    pub uefi: bool,
}

/// Checks kernel parameters: printable, no quotes or backslashes (GRUB and
/// isolinux would read them differently), within the kernel's limit.
pub fn check_kernel_params(params: &str) -> Result<(), IsoError> {
    if params.len() > MAX_KERNEL_PARAMS {
        return Err(IsoError::BadParams(format!(
            "{} bytes, the kernel accepts at most {MAX_KERNEL_PARAMS}",
            params.len()
        )));
    }
    if let Some(c) = params.chars().find(|c| c.is_control() || matches!(c, '\'' | '"' | '\\')) {
        return Err(IsoError::BadParams(format!(
            "character {c:?} is not allowed (no quotes, backslashes, control characters)"
        )));
    }
    Ok(())
}

fn read_input(what: &'static str, path: &Path) -> Result<Vec<u8>, IsoError> {
    let bytes =
        std::fs::read(path).map_err(|source| IsoError::Input { what, path: path.display().to_string(), source })?;
    if bytes.is_empty() {
        return Err(IsoError::EmptyInput { what, path: path.display().to_string() });
    }
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl BootIsoSpec<'_> {
    /// The ISO's name-giving hash (hex SHA-256); reads only the small boot
    /// loader files, never the kernel or ramdisk.
    pub fn content_id(&self) -> Result<String, IsoError> {
        check_kernel_params(self.kernel_params)?;
        let mut h = Sha256::new();
        let mut field = |v: &[u8]| {
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        };
        field(LAYOUT_VERSION.as_bytes());
        field(self.kernel_sha256.as_bytes());
        field(self.ramdisk_sha256.as_bytes());
        field(self.kernel_params.as_bytes());
        field(sha256_hex(&read_input("isolinux.bin", &self.loaders.isolinux_bin)?).as_bytes());
        field(sha256_hex(&read_input("ldlinux.c32", &self.loaders.ldlinux_c32)?).as_bytes());
        match &self.loaders.uefi_loader {
            Some(p) => field(sha256_hex(&read_input("UEFI loader", p)?).as_bytes()),
            None => field(b"no-uefi"),
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// The marker file GRUB searches for: `/FERRIC/<first 8 hex of the id>.ID`.
fn marker_name(content_id: &str) -> String {
    format!("{}.ID", content_id[..8].to_ascii_uppercase())
}

pub fn isolinux_cfg(params: &str) -> String {
    format!("DEFAULT boot\nPROMPT 0\nTIMEOUT 0\nLABEL boot\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND {params}\n")
}

/// GRUB reads `$var` and quotes in its arguments, so every parameter is
/// passed single-quoted (parameters never contain quotes, see
/// [`check_kernel_params`]).
pub fn grub_cfg(params: &str, marker: &str) -> String {
    let quoted: Vec<String> = params.split_whitespace().map(|p| format!("'{p}'")).collect();
    format!(
        "set timeout=0\nset default=0\nsearch --no-floppy --set=root --file /FERRIC/{marker}\n\
         menuentry 'ferric boot' {{\n  linux ($root)/vmlinuz {}\n  initrd ($root)/initrd\n}}\n",
        quoted.join(" ")
    )
}

/// A FAT image (EFI system partition) with `/EFI/BOOT/BOOTX64.EFI` and
/// `/EFI/BOOT/grub.cfg`, deterministic for the same inputs.
pub fn create_esp_image(loader: &[u8], grub_cfg: &str) -> Result<Vec<u8>, IsoError> {
    use hadris_fat::sync::format::{FatFormatOptions, FatVolumeFormatter};
    use hadris_fat::sync::{FatVolume, FatVolumeWriteExt};
    let esp = |e: hadris_fat::Error| IsoError::Esp(e.to_string());
    // room for the files, directories and FAT overhead, in whole MiB
    let size = (loader.len() + grub_cfg.len()).div_ceil(1 << 20) * (1 << 20) + (1 << 20);
    let mut id = Sha256::new();
    id.update(loader);
    id.update(grub_cfg.as_bytes());
    let volume_id = u32::from_le_bytes(id.finalize()[..4].try_into().expect("4 bytes"));
    let mut disk = Cursor::new(vec![0u8; size]);
    let options = FatFormatOptions::new(size as u64).volume_id(volume_id);
    drop(FatVolumeFormatter::format(&mut disk, options).map_err(esp)?);
    disk.set_position(0);
    {
        static EPOCH: hadris_fat::time::EpochTimeProvider = hadris_fat::time::EpochTimeProvider;
        let fs = FatVolume::builder(&mut disk).time_provider(&EPOCH).open().map_err(esp)?;
        let root = fs.root_dir();
        let efi = fs.create_dir(&root, "EFI").map_err(esp)?;
        let boot = fs.create_dir(&efi, "BOOT").map_err(esp)?;
        for (name, content) in [("BOOTX64.EFI", loader), ("grub.cfg", grub_cfg.as_bytes())] {
            let entry = fs.create_file(&boot, name).map_err(esp)?;
            let mut w = fs.write_file(&entry).map_err(esp)?;
            let mut off = 0;
            while off < content.len() {
                off += w.write(&content[off..]).map_err(esp)?;
            }
            w.finish().map_err(esp)?;
        }
        fs.sync().map_err(esp)?;
    }
    Ok(disk.into_inner())
}

fn file_entry(name: &str, bytes: Vec<u8>) -> InputEntry {
    InputEntry::file(name, bytes)
}

fn streamed_entry(what: &'static str, name: &str, path: &Path) -> Result<InputEntry, IsoError> {
    let source = FileSource::from_path(path).map_err(|source| IsoError::Input {
        what,
        path: path.display().to_string(),
        source,
    })?;
    if source.is_empty() {
        return Err(IsoError::EmptyInput { what, path: path.display().to_string() });
    }
    Ok(InputEntry {
        name: Arc::new(name.to_string()),
        kind: InputEntryKind::Source(source),
        metadata: Default::default(),
    })
}

/// Builds the boot ISO described by `spec` at `out` (atomically: a temp
/// file beside it, then a rename). Returns its content id and size.
pub fn create_boot_iso(spec: &BootIsoSpec<'_>, out: &Path) -> Result<BootIso, IsoError> {
    let content_id = spec.content_id()?;
    let marker = marker_name(&content_id);
    let params = spec.kernel_params;
    let grub = grub_cfg(params, &marker);

    let mut entries = vec![
        streamed_entry("kernel", "vmlinuz", spec.kernel)?,
        streamed_entry("ramdisk", "initrd", spec.ramdisk)?,
        InputEntry::directory(
            "isolinux",
            vec![
                file_entry("isolinux.bin", read_input("isolinux.bin", &spec.loaders.isolinux_bin)?),
                file_entry("ldlinux.c32", read_input("ldlinux.c32", &spec.loaders.ldlinux_c32)?),
                file_entry("isolinux.cfg", isolinux_cfg(params).into_bytes()),
            ],
        ),
        InputEntry::directory("FERRIC", vec![file_entry(&marker, content_id.clone().into_bytes())]),
    ];
    let bios = BootEntryOptions {
        boot_image_path: "isolinux/isolinux.bin".into(),
        load_size: NonZeroU16::new(4),
        boot_info_table: true,
        grub2_boot_info: false,
        emulation: EmulationType::NoEmulation,
    };
    let mut sections = Vec::new();
    let uefi = spec.loaders.uefi_loader.is_some();
    if let Some(loader) = &spec.loaders.uefi_loader {
        let esp = create_esp_image(&read_input("UEFI loader", loader)?, &grub)?;
        entries.push(InputEntry::directory(
            "EFI",
            vec![InputEntry::directory("BOOT", vec![file_entry("grub.cfg", grub.clone().into_bytes())])],
        ));
        entries.push(file_entry("efiboot.img", esp));
        sections.push((
            BootSectionOptions { platform: PlatformId::UEFI },
            BootEntryOptions {
                boot_image_path: "efiboot.img".into(),
                load_size: None,
                boot_info_table: false,
                grub2_boot_info: false,
                emulation: EmulationType::NoEmulation,
            },
        ));
    }
    let options = IsoFormatOptions {
        volume_name: VOLUME_LABEL.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("FERRIC".into()),
        sector_size: SECTOR as usize,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level2 { supports_lowercase: false, supports_rrip: false },
            long_filenames: false,
            joliet: Some(JolietLevel::Level3),
            rock_ridge: None,
            el_torito: Some(BootOptions { write_boot_catalog: true, default: bios, entries: sections }),
            hybrid_boot: None,
        },
        strict_charset: false,
    };

    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write_err = |message: String| IsoError::Write { path: out.display().to_string(), message };
    let tmp = tempfile_in(dir).map_err(|e| write_err(e.to_string()))?;
    let result = (|| {
        let file = File::options().read(true).write(true).open(&tmp).map_err(|e| write_err(e.to_string()))?;
        let file = IsoImageWriter::create(file, InputTree::new(PathSeparator::ForwardSlash, entries), options)
            .map_err(|e| write_err(e.to_string()))?;
        make_deterministic(&file).map_err(|e| write_err(format!("resetting timestamps: {e}")))?;
        file.sync_all().map_err(|e| write_err(e.to_string()))?;
        let size = file.metadata().map_err(|e| write_err(e.to_string()))?.len();
        std::fs::rename(&tmp, out).map_err(|e| write_err(e.to_string()))?;
        Ok(BootIso { content_id: content_id.clone(), size, uefi })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A new empty file with an unguessable name in `dir` (`.tmp-iso-…`).
fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let name = format!(".tmp-iso-{:032x}", rand::random::<u128>());
    let path = dir.join(name);
    File::options().write(true).create_new(true).open(&path)?.flush()?;
    Ok(path)
}

/// Resets every timestamp the ISO writer took from the clock: creation and
/// modification dates of each volume descriptor, and the date of every
/// directory record in every directory tree (primary and Joliet).
fn make_deterministic(file: &File) -> std::io::Result<()> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut roots = Vec::new();
    let mut sector = [0u8; SECTOR as usize];
    for n in 16..64u64 {
        file.read_exact_at(&mut sector, n * SECTOR)?;
        if &sector[1..6] != b"CD001" {
            return Err(bad("volume descriptor without CD001"));
        }
        match sector[0] {
            255 => break,
            1 | 2 => {
                sector[813..830].copy_from_slice(FIXED_VD_DATE);
                sector[830..847].copy_from_slice(FIXED_VD_DATE);
                sector[847..864].copy_from_slice(UNSET_VD_DATE);
                sector[864..881].copy_from_slice(UNSET_VD_DATE);
                sector[156 + 18..156 + 25].copy_from_slice(&FIXED_DIR_DATE);
                roots.push(extent_of(&sector[156..190]));
                file.write_all_at(&sector, n * SECTOR)?;
            }
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    let mut stack = roots;
    while let Some((lba, len)) = stack.pop() {
        if !seen.insert(lba) {
            continue;
        }
        for s in 0..u64::from(len).div_ceil(SECTOR) {
            let at = (u64::from(lba) + s) * SECTOR;
            file.read_exact_at(&mut sector, at)?;
            let mut pos = 0;
            while pos + 33 < SECTOR as usize {
                let rec_len = sector[pos] as usize;
                if rec_len == 0 {
                    break;
                }
                if rec_len < 34 || pos + rec_len > SECTOR as usize {
                    return Err(bad("malformed directory record"));
                }
                let rec = &mut sector[pos..pos + rec_len];
                rec[18..25].copy_from_slice(&FIXED_DIR_DATE);
                let is_dir = rec[25] & 0x02 != 0;
                let self_or_parent = rec[32] == 1 && matches!(rec[33], 0 | 1);
                if is_dir && !self_or_parent {
                    stack.push(extent_of(rec));
                }
                pos += rec_len;
            }
            file.write_all_at(&sector, at)?;
        }
    }
    Ok(())
}

fn extent_of(record: &[u8]) -> (u32, u32) {
    let lba = u32::from_le_bytes(record[2..6].try_into().expect("4 bytes"));
    let len = u32::from_le_bytes(record[10..14].try_into().expect("4 bytes"));
    (lba, len)
}
