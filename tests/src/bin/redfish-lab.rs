//! `redfish-lab`: emulated Redfish machines with simulated deploy ramdisks,
//! for driving a running Ferric by hand (README, "Deploy a machine").
//!
//! Starts the sushy-tools emulator (the venv of scripts/deps.sh) with N
//! systems, a ramdisk simulator that boots whatever the emulator is told
//! to boot, and a small image server with a demo whole-disk image; writes a
//! deploy kernel and ramdisk into the images directory Ferric reads
//! file:// URLs from; prints the `baremetal` commands that enroll and
//! deploy the machines. Runs until Ctrl-C or SIGTERM and removes what it
//! started.

use std::path::PathBuf;

use ferric_tests::ramdisk::{EmulatorConfig, RamdiskSim, SimConfig, lab_mac};
use ferric_tests::redfish::{SushyLab, SushyOptions};
use sha2::Digest as _;

const USAGE: &str = "usage: redfish-lab [--systems N] [--images-dir DIR] [--disk-mib N]\n\n\
    --systems N       emulated machines (default 1)\n\
    --images-dir DIR  where the deploy kernel and ramdisk go; Ferric must allow it\n\
                      ([image_cache] file_url_allowed_roots; <data dir>/images always is).\n\
                      Default: .ferric/images (scripts/all-in-one.sh's data dir)\n\
    --disk-mib N      size of the demo image (default 16)\n";

fn main() {
    let mut systems = 1usize;
    let mut images_dir = PathBuf::from(".ferric/images");
    let mut disk_mib = 16usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprint!("redfish-lab: {name} needs a value\n\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--systems" => systems = value("--systems").parse().unwrap_or(0),
            "--images-dir" => images_dir = PathBuf::from(value("--images-dir")),
            "--disk-mib" => disk_mib = value("--disk-mib").parse().unwrap_or(0),
            "-h" | "--help" => {
                print!("{USAGE}");
                return;
            }
            other => {
                eprint!("redfish-lab: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if systems == 0 || disk_mib == 0 {
        eprint!("redfish-lab: --systems and --disk-mib take a positive number\n\n{USAGE}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(run(systems, images_dir, disk_mib)) {
        eprintln!("redfish-lab: {e:#}");
        std::process::exit(1);
    }
}

async fn run(systems: usize, images_dir: PathBuf, disk_mib: usize) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(&images_dir).with_context(|| format!("images dir {}", images_dir.display()))?;
    let images_dir = images_dir.canonicalize()?;
    let kernel = images_dir.join("lab-deploy.kernel");
    let ramdisk = images_dir.join("lab-deploy.initramfs");
    // the emulator boots nothing: these only have to travel into the ISO
    std::fs::write(&kernel, "redfish-lab deploy kernel\n".repeat(2000))?;
    std::fs::write(&ramdisk, "redfish-lab deploy ramdisk\n".repeat(4000))?;

    let sim_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let lab = SushyLab::start(SushyOptions {
        systems,
        notify_url: Some(format!("http://127.0.0.1:{sim_port}/notify")),
        ..Default::default()
    });
    let root = tempfile::Builder::new().prefix("redfish-lab").tempdir()?;
    // iSCSI targets need tgt and root (tgtd's socket lives in /var/run)
    let iscsi = unsafe { libc::geteuid() } == 0
        && std::process::Command::new("tgtd")
            .arg("--help")
            .output()
            .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty());
    let sim = RamdiskSim::start(SimConfig {
        listen: format!("127.0.0.1:{sim_port}"),
        emulators: vec![EmulatorConfig::from_lab(&lab)],
        disks_dir: Some(root.path().join("disks")),
        log_path: Some(root.path().join("ramdisk-sim.jsonl")),
        disk_size_bytes: (disk_mib as u64 * 2).max(64) * 1024 * 1024,
        boot_delay_ms: 2000,
        tls: true,
        iscsi,
        ..Default::default()
    })
    .await?;

    // the demo image: an MBR and bytes, served over HTTP
    let size = disk_mib * 1024 * 1024;
    let mut image: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    image[..512].fill(0);
    image[440..444].copy_from_slice(&0x4c41_4221u32.to_le_bytes());
    // one Linux partition from sector 2048 to the end (IPA looks for one)
    let sectors = (size / 512) as u32 - 2048;
    image[446 + 4] = 0x83;
    image[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    image[446 + 12..446 + 16].copy_from_slice(&sectors.to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    let checksum = hex::encode(sha2::Sha256::digest(&image));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let image_url = format!("http://{}/demo-disk.raw", listener.local_addr()?);
    let image = std::sync::Arc::new(image);
    let app = axum::Router::new().route(
        "/demo-disk.raw",
        axum::routing::get(move || {
            let image = image.clone();
            async move { image.as_ref().clone() }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    println!("Redfish emulator: {} ({} systems)", lab.url, systems);
    println!(
        "ramdisk simulator: {} (log: {}; disks: {})",
        sim.url(),
        sim.log_path().display(),
        root.path().join("disks").display()
    );
    println!("demo image: {image_url} (sha256 {checksum})");
    if !iscsi {
        println!("(no tgtd or not root: iscsi deploys will fail; direct deploys work)");
    }
    println!("\nWith Ferric running (scripts/all-in-one.sh) and the venv active (. .venv/bin/activate):\n");
    println!("export OS_AUTH_TYPE=none OS_ENDPOINT=http://127.0.0.1:6385");
    for i in 0..systems {
        let info = lab.driver_info(i);
        println!(
            "baremetal node create --driver redfish --name lab{i} --deploy-interface direct \\\n  \
             --driver-info redfish_address={} --driver-info redfish_system_id={} \\\n  \
             --driver-info deploy_kernel=file://{} --driver-info deploy_ramdisk=file://{}",
            info["redfish_address"].as_str().unwrap_or_default(),
            info["redfish_system_id"].as_str().unwrap_or_default(),
            kernel.display(),
            ramdisk.display()
        );
        println!("baremetal port create {} --node lab{i}", lab_mac(i));
        println!(
            "baremetal node manage lab{i} --wait && baremetal node provide lab{i} --wait\n\
             baremetal node set lab{i} --instance-info image_source={image_url} --instance-info image_checksum={checksum}\n\
             baremetal node deploy lab{i} --wait\n"
        );
    }
    println!("(--deploy-interface iscsi deploys the same image through an iSCSI target instead.)");
    println!("The machine's disk is {}; Ctrl-C stops the lab.", sim.disk_path(&lab.systems[0]).display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.stop().await;
    drop(lab);
    Ok(())
}
