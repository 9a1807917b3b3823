//! Boot ISOs checked by the standard tools (xorriso, isoinfo, fsck.fat,
//! mtools) and booted in QEMU (TCG) by BIOS and by UEFI up to the ramdisk's
//! /init, which prints the kernel command line it got.
//!
//! The kernel, ramdisk and GRUB loader come from scripts/boot-fixtures.sh
//! (Debian's kernel, a busybox initramfs, grub-mkimage); scripts/deps.sh
//! installs QEMU, OVMF, isolinux and GRUB. The QEMU tests are skipped only
//! when qemu-system-x86_64 is missing outside CI; under CI=true they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{boot, fixtures, qemu_available, require};

use ferric_deploy::image::iso::{BootIsoSpec, BootLoaders, create_boot_iso, create_esp_image};
use sha2::{Digest, Sha256};

const PARAMS: &str = "console=ttyS0 panic=1 ferric.test=boot-iso ipa-api-url=http://10.0.2.2:6385";

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn loaders(fx: &Path, uefi: bool) -> BootLoaders {
    BootLoaders {
        isolinux_bin: "/usr/lib/ISOLINUX/isolinux.bin".into(),
        ldlinux_c32: "/usr/lib/syslinux/modules/bios/ldlinux.c32".into(),
        uefi_loader: uefi.then(|| fx.join("BOOTX64.EFI")),
    }
}

struct Built {
    _dir: tempfile::TempDir,
    iso: PathBuf,
    id: String,
}

fn build(fx: &Path, params: &str, uefi: bool) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = (fx.join("vmlinuz"), fx.join("initrd"));
    let (ks, rs) = (sha256_file(&kernel), sha256_file(&ramdisk));
    let loaders = loaders(fx, uefi);
    let spec = BootIsoSpec {
        kernel: &kernel,
        kernel_sha256: &ks,
        ramdisk: &ramdisk,
        ramdisk_sha256: &rs,
        kernel_params: params,
        loaders: &loaders,
    };
    let iso = dir.path().join("boot.iso");
    let built = create_boot_iso(&spec, &iso).unwrap();
    assert_eq!(built.size, std::fs::metadata(&iso).unwrap().len());
    assert_eq!(built.uefi, uefi);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("boot.iso")], "no temp file left beside the ISO");
    Built { _dir: dir, iso, id: built.content_id }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn boot_iso_has_bios_and_uefi_el_torito_and_the_files() {
    require("xorriso");
    require("isoinfo");
    require("fsck.fat");
    require("mtype");
    let fx = fixtures();
    let b = build(&fx, PARAMS, true);

    let report = run(Command::new("xorriso").args(["-indev"]).arg(&b.iso).args(["-report_el_torito", "plain"]));
    let entries: Vec<&str> = report.lines().filter(|l| l.starts_with("El Torito boot img :")).collect();
    assert_eq!(entries.len(), 2, "two boot images expected:\n{report}");
    assert!(entries[0].contains("BIOS") && entries[0].contains(" y ") && entries[0].contains("none"), "{report}");
    assert!(entries[1].contains("UEFI") && entries[1].contains(" y ") && entries[1].contains("none"), "{report}");
    assert!(report.contains("/isolinux/isolinux.bin"), "{report}");
    assert!(report.contains("/efiboot.img"), "{report}");

    let info = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&b.iso));
    assert!(info.contains("Volume id: FERRIC_BOOT"), "{info}");
    assert!(info.contains("El Torito VD version 1 found"), "{info}");
    assert!(info.contains("Joliet"), "{info}");

    // every file comes back out byte for byte
    let out = tempfile::tempdir().unwrap();
    run(Command::new("xorriso").args(["-osirrox", "on", "-indev"]).arg(&b.iso).args(["-extract", "/"]).arg(out.path()));
    assert_eq!(std::fs::read(out.path().join("vmlinuz")).unwrap(), std::fs::read(fx.join("vmlinuz")).unwrap());
    assert_eq!(std::fs::read(out.path().join("initrd")).unwrap(), std::fs::read(fx.join("initrd")).unwrap());
    let cfg = std::fs::read_to_string(out.path().join("isolinux/isolinux.cfg")).unwrap();
    assert!(cfg.contains(&format!("APPEND {PARAMS}\n")), "{cfg}");
    let grub = std::fs::read_to_string(out.path().join("EFI/BOOT/grub.cfg")).unwrap();
    assert!(grub.contains("'ferric.test=boot-iso'"), "{grub}");
    let marker = format!("FERRIC/{}.ID", b.id[..8].to_ascii_uppercase());
    assert_eq!(std::fs::read_to_string(out.path().join(&marker)).unwrap(), b.id);

    // the EFI partition image is a clean FAT with the loader and grub.cfg
    let esp = out.path().join("efiboot.img");
    let fsck = Command::new("fsck.fat").arg("-n").arg(&esp).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat: {}", String::from_utf8_lossy(&fsck.stdout));
    let loader = Command::new("mtype").arg("-i").arg(&esp).arg("::/EFI/BOOT/BOOTX64.EFI").output().unwrap();
    assert!(loader.status.success());
    assert_eq!(loader.stdout, std::fs::read(fx.join("BOOTX64.EFI")).unwrap());
    let esp_grub = run(Command::new("mtype").arg("-i").arg(&esp).arg("::/EFI/BOOT/grub.cfg"));
    assert_eq!(esp_grub, grub);
}

#[test]
fn boot_iso_bytes_depend_only_on_the_inputs() {
    let fx = fixtures();
    let a = build(&fx, PARAMS, true);
    std::thread::sleep(Duration::from_millis(1100)); // a clock-stamped field would now differ
    let b = build(&fx, PARAMS, true);
    assert_eq!(a.id, b.id);
    assert!(std::fs::read(&a.iso).unwrap() == std::fs::read(&b.iso).unwrap(), "two builds differ");
    let c = build(&fx, &format!("{PARAMS} extra=1"), true);
    assert_ne!(c.id, a.id, "other parameters, other content id");
    let d = build(&fx, PARAMS, false);
    assert_ne!(d.id, a.id, "without a UEFI loader, another ISO");
}

#[test]
fn esp_image_is_deterministic_and_passes_fsck() {
    require("fsck.fat");
    let a = create_esp_image(&[0x4d; 300_000], "set timeout=0\n").unwrap();
    let b = create_esp_image(&[0x4d; 300_000], "set timeout=0\n").unwrap();
    assert!(a == b);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("esp.img");
    std::fs::write(&p, &a).unwrap();
    let fsck = Command::new("fsck.fat").arg("-n").arg(&p).output().unwrap();
    assert!(fsck.status.success(), "fsck.fat: {}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn bad_inputs_are_refused_with_what_is_wrong() {
    let fx = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let loaders = loaders(&fx, false);
    let kernel = fx.join("vmlinuz");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing");
    let out = dir.path().join("x.iso");
    let spec = |params: &'static str, ramdisk: &'static Path| BootIsoSpec {
        kernel: &kernel,
        kernel_sha256: "k",
        ramdisk,
        ramdisk_sha256: "r",
        kernel_params: params,
        loaders: &loaders,
    };
    let leak: &'static Path = Box::leak(fx.join("initrd").into_boxed_path());
    let e = create_boot_iso(&spec("a='b'", leak), &out).unwrap_err().to_string();
    assert!(e.contains("kernel parameters") && e.contains('\''), "{e}");
    let e = create_boot_iso(&spec("a\nb", leak), &out).unwrap_err().to_string();
    assert!(e.contains("kernel parameters"), "{e}");
    let long: &'static str = Box::leak("x".repeat(3000).into_boxed_str());
    let e = create_boot_iso(&spec(long, leak), &out).unwrap_err().to_string();
    assert!(e.contains("3000 bytes"), "{e}");
    let m: &'static Path = Box::leak(missing.into_boxed_path());
    let e = create_boot_iso(&spec("a=b", m), &out).unwrap_err().to_string();
    assert!(e.contains("ramdisk") && e.contains("missing"), "{e}");
    let em: &'static Path = Box::leak(empty.into_boxed_path());
    let e = create_boot_iso(&spec("a=b", em), &out).unwrap_err().to_string();
    assert!(e.contains("ramdisk") && e.contains("is empty"), "{e}");
    assert!(!out.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "nothing but the empty input left: {names:?}");
}

fn assert_booted(console: &str) {
    let line = console.lines().find(|l| l.contains("FERRIC-RAMDISK-UP")).unwrap();
    for p in PARAMS.split_whitespace() {
        assert!(line.split_whitespace().any(|w| w == p), "kernel command line lacks {p}: {line}");
    }
}

#[test]
fn boot_iso_boots_in_qemu_bios() {
    if !qemu_available() {
        return;
    }
    let b = build(&fixtures(), PARAMS, true);
    let console = boot(&b.iso, false);
    assert!(console.contains("Linux version"), "the kernel ran:\n{console}");
    assert_booted(&console);
    // isolinux, not GRUB, loaded it: isolinux adds initrd= from its INITRD line
    assert!(console.contains("BOOT_IMAGE=/vmlinuz") && console.contains("initrd=/initrd"), "{console}");
}

#[test]
fn boot_iso_boots_in_qemu_uefi() {
    if !qemu_available() {
        return;
    }
    let b = build(&fixtures(), PARAMS, true);
    let console = boot(&b.iso, true);
    assert!(console.contains("Linux version"), "the kernel ran:\n{console}");
    assert_booted(&console);
    // GRUB from the EFI partition loaded it, from the CD it found by the marker
    assert!(console.contains("BOOT_IMAGE=(cd0)/vmlinuz"), "{console}");
}
