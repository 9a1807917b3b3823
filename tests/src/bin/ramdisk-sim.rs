//! `ramdisk-sim --config sim.json`: simulated deploy ramdisks (the agent
//! protocol of ironic-python-agent) for the systems of one or more Redfish
//! emulators. Prints its URL (`/notify` is where the emulators'
//! `EXTERNAL_NOTIFICATION_URL` points) and runs until SIGTERM or Ctrl-C.
//! The config is [`ferric_tests::ramdisk::SimConfig`] as JSON.

use ferric_tests::ramdisk::{RamdiskSim, SimConfig};

const USAGE: &str = "usage: ramdisk-sim --config sim.json\n\n\
    sim.json (every key optional except emulators):\n\
    {\"listen\": \"127.0.0.1:9999\", \"advertise_host\": null,\n \
     \"emulators\": [{\"url\": \"http://127.0.0.1:8000\", \"username\": null, \"password\": null, \"ca_file\": null,\n \
                    \"systems\": [{\"id\": \"<system uuid>\", \"macs\": [\"52:54:00:00:00:00\"]}]}],\n \
     \"disks_dir\": \"/var/tmp/sim-disks\", \"disk_size_bytes\": 67108864, \"boot_delay_ms\": 1000,\n \
     \"heartbeat_interval_ms\": null, \"heartbeat_retry_ms\": null, \"forced_heartbeat_min_ms\": 5000,\n \
     \"lookup_interval_ms\": 1000, \"lookup_max_interval_ms\": 60000, \"lookup_timeout_ms\": 600000,\n \
     \"agent_restart_ms\": 30000,\n \
     \"download_retries\": 9, \"download_retry_interval_ms\": 10000, \"http_timeout_ms\": 30000,\n \
     \"insecure\": false, \"ca_file\": null, \"tls\": false, \"poll_interval_ms\": null,\n \
     \"cd_params\": \"always\", \"bmc_concurrency\": 8,\n \
     \"log_path\": \"sim.jsonl\", \"log_requests\": true, \"unreachable\": \"close\",\n \
     \"iscsi\": false, \"tgtd\": \"tgtd\", \"tgtadm\": \"tgtadm\",\n \
     \"faults\": {\"<system uuid>\": {\"die_during_download\": false, \"die_after_bytes\": null,\n \
                 \"fail_commands\": {\"deploy.write_image\": \"disk on fire\"},\n \
                 \"command_delay_ms\": {\"*\": 0}, \"lose_heartbeats\": 0,\n \
                 \"iscsi_error\": null, \"boot_delay_ms\": null}}}\n\n\
    Control at run time: POST <url>/control/<system> with a JSON object of fault fields\n\
    (and \"crash\": true); GET <url>/control/<system> shows the machine.\n";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.as_slice() {
        [flag, path] if flag == "--config" => path.clone(),
        [flag] if flag.starts_with("--config=") => flag["--config=".len()..].to_string(),
        [flag] if flag == "-h" || flag == "--help" => {
            print!("{USAGE}");
            return;
        }
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ramdisk-sim: {path}: {e}");
            std::process::exit(1);
        }
    };
    let config: SimConfig = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ramdisk-sim: {path}: {e}");
            std::process::exit(1);
        }
    };
    let sim = match RamdiskSim::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ramdisk-sim: {e:#}");
            std::process::exit(1);
        }
    };
    println!("{}", sim.url());
    eprintln!(
        "ramdisk-sim: {} machines; notifications at {}; log {}",
        sim.machines().len(),
        sim.notify_url(),
        sim.log_path().display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    sim.stop().await;
}
