//! Side-by-side timing of Ferric's in-process image builders against the
//! standard tools on the same inputs, printed as ratios (lower = Ferric is
//! faster). Run in release mode after `scripts/boot-fixtures.sh`:
//!
//! ```text
//! cargo run --release -p ferric-deploy --example image-bench [-- --runs 7 --ramdisk-mb 256]
//! ```
//!
//! * boot ISO: `create_boot_iso` vs `xorriso -as mkisofs` with the same
//!   files, El Torito BIOS + UEFI entries, Joliet; kernel and initrd from
//!   target/boot-fixtures plus a ramdisk of `--ramdisk-mb` random MiB (a
//!   realistic IPA ramdisk size) so streaming throughput shows;
//! * parameters floppy: `parameters_floppy` vs `mkfs.vfat -C` + `mcopy`.
//!
//! Each side runs `--runs` times alternately (so drift on a noisy machine
//! hits both); the median is compared. Outputs go to a temp dir on the
//! same file system; the page cache is warm for both after the first run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferric_deploy::image::floppy::parameters_floppy;
use ferric_deploy::image::iso::{BootIsoSpec, BootLoaders, create_boot_iso, create_esp_image, grub_cfg, isolinux_cfg};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    let runs = arg("--runs", 7);
    let ramdisk_mb = arg("--ramdisk-mb", 256);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let fx = root.join("target/boot-fixtures");
    assert!(fx.join("vmlinuz").exists(), "run scripts/boot-fixtures.sh first");
    let work = tempfile::tempdir_in(root.join("target")).unwrap();
    let w = work.path();

    // a ramdisk of realistic size: random bytes do not compress, like a cpio.gz
    let ramdisk = w.join("ramdisk");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&ramdisk).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..ramdisk_mb {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let kernel = fx.join("vmlinuz");
    let loaders = BootLoaders {
        isolinux_bin: "/usr/lib/ISOLINUX/isolinux.bin".into(),
        ldlinux_c32: "/usr/lib/syslinux/modules/bios/ldlinux.c32".into(),
        uefi_loader: Some(fx.join("BOOTX64.EFI")),
    };
    let params = "console=ttyS0 ipa-api-url=http://10.0.0.1:6385 ipa-global-request-id=req-1";
    let spec = BootIsoSpec {
        kernel: &kernel,
        kernel_sha256: "0",
        ramdisk: &ramdisk,
        ramdisk_sha256: "1",
        kernel_params: params,
        loaders: &loaders,
    };

    // the same tree for xorriso, built once (not timed): what Ferric writes
    let tree = w.join("tree");
    let id = spec.content_id().unwrap();
    let marker = format!("{}.ID", id[..8].to_ascii_uppercase());
    for d in ["isolinux", "EFI/BOOT", "FERRIC"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::hard_link(&kernel, tree.join("vmlinuz"))
        .or_else(|_| std::fs::copy(&kernel, tree.join("vmlinuz")).map(drop))
        .unwrap();
    std::fs::hard_link(&ramdisk, tree.join("initrd")).unwrap();
    std::fs::copy(&loaders.isolinux_bin, tree.join("isolinux/isolinux.bin")).unwrap();
    std::fs::copy(&loaders.ldlinux_c32, tree.join("isolinux/ldlinux.c32")).unwrap();
    std::fs::write(tree.join("isolinux/isolinux.cfg"), isolinux_cfg(params)).unwrap();
    let grub = grub_cfg(params, &marker);
    std::fs::write(tree.join("EFI/BOOT/grub.cfg"), &grub).unwrap();
    std::fs::write(tree.join("FERRIC").join(&marker), &id).unwrap();
    let esp = create_esp_image(&std::fs::read(fx.join("BOOTX64.EFI")).unwrap(), &grub).unwrap();
    std::fs::write(tree.join("efiboot.img"), esp).unwrap();

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let out = w.join(format!("ferric-{i}.iso"));
        let t = Instant::now();
        create_boot_iso(&spec, &out).unwrap();
        ours.push(t.elapsed());
        std::fs::remove_file(&out).unwrap();

        let out = w.join(format!("xorriso-{i}.iso"));
        let t = Instant::now();
        run(Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&out)
            .args(["-V", "FERRIC_BOOT", "-J", "-b", "isolinux/isolinux.bin", "-c", "boot.catalog"])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
            .args(["-eltorito-alt-boot", "-e", "efiboot.img", "-no-emul-boot"])
            .arg(&tree));
        theirs.push(t.elapsed());
        std::fs::remove_file(&out).unwrap();
    }
    let payload = std::fs::metadata(&kernel).unwrap().len() + std::fs::metadata(&ramdisk).unwrap().len();
    report(&format!("boot ISO ({} MB payload)", payload >> 20), ours, theirs);
    // the kernel and ramdisk are streamed: the process never holds the payload
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    println!("peak RSS of this process after the ISO runs: {} MB (payload {} MB)", hwm >> 10, payload >> 20);

    // parameters floppy
    let mut p = std::collections::BTreeMap::new();
    p.insert("ipa-api-url".to_string(), "http://10.0.0.1:6385".to_string());
    p.insert("ipa-agent-token".to_string(), "x".repeat(43));
    p.insert("node_uuid".to_string(), "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".to_string());
    p.insert("boot_mode".to_string(), "uefi".to_string());
    let params_txt: String = p.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let txt = w.join("parameters.txt");
    std::fs::write(&txt, &params_txt).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs.max(15) {
        let out = w.join(format!("ferric-{i}.img"));
        let t = Instant::now();
        let img = parameters_floppy(&p).unwrap();
        std::fs::write(&out, img).unwrap();
        ours.push(t.elapsed());
        let out2 = w.join(format!("mtools-{i}.img"));
        let t = Instant::now();
        run(Command::new("mkfs.vfat").args(["-C", "-n", "ir-vfd-dev"]).arg(&out2).arg("1440"));
        run(Command::new("mcopy").arg("-i").arg(&out2).arg(&txt).arg("::/parameters.txt"));
        theirs.push(t.elapsed());
        let _ = (std::fs::remove_file(out), std::fs::remove_file(out2));
    }
    report("parameters floppy", ours, theirs);
}

fn report(what: &str, ours: Vec<Duration>, theirs: Vec<Duration>) {
    let (o, t) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "{what}: ferric median {:.1} ms, tools median {:.1} ms, ratio ferric/tools = {:.2} ({} runs each)",
        o.as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3,
        o.as_secs_f64() / t.as_secs_f64(),
        ours.len()
    );
}
