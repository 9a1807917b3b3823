//! The TFTP server against real clients: tftp-hpa for plain RFC 1350
//! transfers, atftp for option negotiation, and a hand-written client for
//! what no client's output shows (OACK contents, block numbers,
//! retransmissions, transfer ids, the busy limit).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use ferric_deploy::tftp::{TftpOptions, TftpServer};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// A server on a loopback port, serving `<dir>/root`; `<dir>/secret` lies
/// outside it.
struct Server {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(opts: TftpOptions) -> Server {
        recorded(); // before the first metric is emitted
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::write(dir.path().join("secret"), b"outside the root").unwrap();
        let server = TftpServer::bind("127.0.0.1:0".parse().unwrap(), dir.path().join("root"), opts).await.unwrap();
        let addr = server.local_addr();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        Server { addr, dir, cancel, task }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Writes `len` bytes of [`pattern`] under the root; returns them.
    fn put(&self, name: &str, len: usize) -> Vec<u8> {
        let bytes = pattern(len, name.len() as u64);
        let path = self.root().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve did not return within 10 s of cancel")
            .unwrap();
    }
}

/// Pseudo-random bytes (xorshift): a block lost, repeated or reordered
/// shows in a comparison, as it would not in a constant fill.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts() -> TftpOptions {
    TftpOptions::default()
}

// ---- real clients --------------------------------------------------------

/// The project's convention: a missing tool fails under CI, else skips.
fn client_available(binary: &str, package: &str) -> bool {
    if common::have(binary) {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "{binary} is missing under CI: scripts/deps.sh installs {package}");
    eprintln!("SKIPPED: {binary} is not installed (scripts/deps.sh installs {package})");
    false
}

/// Runs `args` under `timeout 30`; returns whether it succeeded and its
/// output (stdout, then stderr).
async fn run(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("timeout")
        .arg("30")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(124), "{args:?} timed out after 30 s; output:\n{text}");
    (out.status.success(), text)
}

/// `tftp -m binary 127.0.0.1 PORT -c <command...>` (tftp-hpa).
async fn tftp_hpa(server: &Server, command: &[&str]) -> (bool, String) {
    let port = server.addr.port().to_string();
    let mut args = vec!["tftp", "-v", "-m", "binary", "127.0.0.1", &port, "-c"];
    args.extend_from_slice(command);
    run(&args).await
}

/// `atftp --trace [--option ...] -g -r <remote> -l <local> 127.0.0.1 PORT`.
async fn atftp_get(server: &Server, options: &[&str], remote: &str, local: &Path) -> (bool, String) {
    let port = server.addr.port().to_string();
    let local = local.to_str().unwrap();
    let mut args = vec!["atftp", "--trace"];
    for option in options {
        args.extend_from_slice(&["--option", option]);
    }
    args.extend_from_slice(&["-g", "-r", remote, "-l", local, "127.0.0.1", &port]);
    run(&args).await
}

#[tokio::test]
async fn tftp_hpa_downloads_byte_for_byte() {
    if !client_available("tftp", "tftp-hpa") {
        return;
    }
    let server = Server::start(opts()).await;
    let sent_before = recorded().get("ferric_tftp_bytes_sent_total");
    let out = tempfile::tempdir().unwrap();
    // 3 MiB ends with an empty DATA block; the other size does not
    for (name, len) in [("exact.bin", 3 << 20), ("boot/odd.bin", (3 << 20) + 1234)] {
        let bytes = server.put(name, len);
        let local = out.path().join("got");
        // PXE firmware asks with a leading slash
        let remote = format!("/{name}");
        let (ok, output) = tftp_hpa(&server, &["get", &remote, local.to_str().unwrap()]).await;
        assert!(ok, "tftp get {remote} failed:\n{output}");
        assert!(std::fs::read(&local).unwrap() == bytes, "{name}: bytes differ; tftp said:\n{output}");
    }
    assert!(recorded().get("ferric_tftp_bytes_sent_total") - sent_before >= 2 * (3 << 20));
    server.stop().await;
}

/// The DATA sizes atftp's trace shows, in order.
fn atftp_data_sizes(trace: &str) -> Vec<usize> {
    trace
        .lines()
        .filter_map(|l| l.split_once("DATA <block: ")?.1.split_once("size ")?.1.split('>').next()?.trim().parse().ok())
        .collect()
}

fn atftp_oack(trace: &str) -> &str {
    trace.lines().find(|l| l.contains("received OACK")).unwrap_or_else(|| panic!("no OACK in atftp's trace:\n{trace}"))
}

#[tokio::test]
async fn atftp_negotiates_blksize_tsize_and_timeout() {
    if !client_available("atftp", "atftp") {
        return;
    }
    let server = Server::start(opts()).await;
    let len = (1 << 20) + 77;
    let bytes = server.put("ramdisk", len);
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("got");
    let (ok, trace) = atftp_get(&server, &["blksize 1428", "tsize 0", "timeout 2"], "ramdisk", &local).await;
    assert!(ok, "atftp failed:\n{trace}");
    assert!(std::fs::read(&local).unwrap() == bytes, "bytes differ; atftp said:\n{trace}");
    let oack = atftp_oack(&trace);
    for granted in [format!("tsize: {len},"), "timeout: 2,".into(), "blksize: 1428,".into()] {
        assert!(oack.contains(&granted), "{granted} missing from {oack:?}");
    }
    let mut expected = vec![1428; len / 1428];
    expected.push(len % 1428);
    assert_eq!(atftp_data_sizes(&trace), expected, "DATA sizes at blksize 1428");

    // beyond the configured max, the server grants its max and uses it
    let (ok, trace) = atftp_get(&server, &["blksize 9000"], "ramdisk", &local).await;
    assert!(ok, "atftp failed:\n{trace}");
    assert!(std::fs::read(&local).unwrap() == bytes, "bytes differ at blksize 9000");
    assert!(atftp_oack(&trace).contains("blksize: 1468,"), "{}", atftp_oack(&trace));
    assert_eq!(atftp_data_sizes(&trace)[0], 1468);
    server.stop().await;
}

#[tokio::test]
async fn real_clients_report_errors() {
    let (hpa, atftp) = (client_available("tftp", "tftp-hpa"), client_available("atftp", "atftp"));
    let server = Server::start(opts()).await;
    std::os::unix::fs::symlink("../secret", server.root().join("link")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("got");
    let local_str = local.to_str().unwrap();
    let secret = server.dir.path().to_str().unwrap().to_string();
    let cases = [("missing", "file not found"), ("../secret", "access violation"), ("link", "access violation")];
    if hpa {
        for (remote, expected) in cases {
            let (_, output) = tftp_hpa(&server, &["get", remote, local_str]).await;
            assert!(output.to_lowercase().contains(expected), "tftp get {remote}: want {expected:?}, got:\n{output}");
            assert!(!output.contains(&secret), "the server's path leaked:\n{output}");
        }
        std::fs::write(&local, b"upload").unwrap();
        let (_, output) = tftp_hpa(&server, &["put", local_str, "uploaded"]).await;
        assert!(output.contains("read-only"), "tftp put: want a refusal, got:\n{output}");
        assert!(!server.root().join("uploaded").exists());
    }
    if atftp {
        for (remote, expected) in cases {
            let _ = std::fs::remove_file(&local);
            let (ok, output) = atftp_get(&server, &[], remote, &local).await;
            assert!(!ok, "atftp get {remote} succeeded:\n{output}");
            assert!(output.to_lowercase().contains(expected), "atftp get {remote}: want {expected:?}, got:\n{output}");
            assert_ne!(std::fs::read(&local).ok().as_deref(), Some(&b"outside the root"[..]));
        }
    }
    server.stop().await;
}

// ---- a hand-written client ----------------------------------------------

#[derive(Debug, PartialEq)]
enum Reply {
    Data(u16, Vec<u8>),
    Oack(Vec<(String, String)>),
    Error(u16, String),
}

fn decode(packet: &[u8]) -> Reply {
    assert!(packet.len() >= 4, "short packet {packet:?}");
    let number = u16::from_be_bytes([packet[2], packet[3]]);
    let strings = |bytes: &[u8]| -> Vec<String> {
        assert_eq!(bytes.last(), Some(&0), "strings not NUL-terminated: {bytes:?}");
        bytes[..bytes.len() - 1].split(|&b| b == 0).map(|s| String::from_utf8(s.to_vec()).unwrap()).collect()
    };
    match u16::from_be_bytes([packet[0], packet[1]]) {
        3 => Reply::Data(number, packet[4..].to_vec()),
        5 => Reply::Error(number, strings(&packet[4..]).concat()),
        6 => {
            let s = strings(&packet[2..]);
            assert_eq!(s.len() % 2, 0, "OACK with an odd number of strings: {s:?}");
            Reply::Oack(s.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
        }
        other => panic!("opcode {other} from a server: {packet:?}"),
    }
}

fn request(opcode: u16, name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = opcode.to_be_bytes().to_vec();
    for s in [name, mode].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

/// One transfer's client end. The first reply from a port other than the
/// listener's fixes the transfer id; every later reply must come from it.
struct Client {
    socket: UdpSocket,
    listener: SocketAddr,
    tid: Option<SocketAddr>,
    buf: Vec<u8>,
}

impl Client {
    async fn new(server: &Server) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Client { socket, listener: server.addr, tid: None, buf: vec![0; 1 << 16] }
    }

    async fn send_to_listener(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.listener).await.unwrap();
    }

    async fn rrq(&self, name: &str, options: &[(&str, &str)]) {
        self.send_to_listener(&request(1, name, "octet", options)).await;
    }

    async fn send(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.tid.expect("no transfer yet")).await.unwrap();
    }

    async fn ack(&self, block: u16) {
        let [hi, lo] = block.to_be_bytes();
        self.send(&[0, 4, hi, lo]).await;
    }

    /// The next reply and where it came from, or None after `wait`.
    async fn recv_within(&mut self, wait: Duration) -> Option<(SocketAddr, Reply)> {
        let (n, from) = tokio::time::timeout(wait, self.socket.recv_from(&mut self.buf)).await.ok()?.unwrap();
        if from != self.listener {
            assert_eq!(*self.tid.get_or_insert(from), from, "a reply from another transfer id");
        }
        Some((from, decode(&self.buf[..n])))
    }

    async fn recv(&mut self) -> Reply {
        self.recv_within(Duration::from_secs(5)).await.expect("no reply within 5 s").1
    }

    /// Receives DATA from block 1 on, ACKing each, until a short block;
    /// returns the block sizes and the bytes.
    async fn download(&mut self, blksize: usize) -> (Vec<usize>, Vec<u8>) {
        let (mut sizes, mut bytes, mut expected) = (Vec::new(), Vec::new(), 1u16);
        loop {
            let Reply::Data(block, data) = self.recv().await else { panic!("want DATA {expected}") };
            assert_eq!(block, expected, "DATA out of sequence after {} blocks", sizes.len());
            self.ack(block).await;
            sizes.push(data.len());
            bytes.extend_from_slice(&data);
            if data.len() < blksize {
                return (sizes, bytes);
            }
            expected = expected.wrapping_add(1);
        }
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn oack_carries_only_what_was_granted() {
    let server = Server::start(opts()).await;
    let bytes = server.put("boot/pxelinux.0", 5000);

    let mut c = Client::new(&server).await;
    let asked = [("blksize", "1024"), ("TSIZE", "0"), ("windowsize", "4"), ("timeout", "3"), ("blksize", "512")];
    c.rrq("/boot/pxelinux.0", &asked).await;
    assert_eq!(c.recv().await, Reply::Oack(pairs(&[("blksize", "1024"), ("tsize", "5000"), ("timeout", "3")])));
    let tid = c.tid.unwrap();
    assert_eq!(tid.ip(), server.addr.ip());
    assert_ne!(tid.port(), server.addr.port(), "the transfer must have its own port");
    c.ack(0).await;
    let (sizes, got) = c.download(1024).await;
    assert_eq!(sizes, [1024, 1024, 1024, 1024, 904]);
    assert!(got == bytes);

    // more than the configured max: the max
    let mut c = Client::new(&server).await;
    c.rrq("boot/pxelinux.0", &[("blksize", "65464")]).await;
    assert_eq!(c.recv().await, Reply::Oack(pairs(&[("blksize", "1468")])));
    c.ack(0).await;
    assert_eq!(c.download(1468).await.0, [1468, 1468, 1468, 596]);

    // nothing granted: no OACK, DATA 1 at 512
    let mut c = Client::new(&server).await;
    c.rrq("boot/pxelinux.0", &[("blksize", "4"), ("multicast", "")]).await;
    let (sizes, got) = c.download(512).await;
    assert_eq!(sizes.len(), 10);
    assert!(got == bytes);
    server.stop().await;
}

#[tokio::test]
async fn modes_netascii_served_unchanged_others_refused() {
    let server = Server::start(opts()).await;
    let text = b"line one\nline two\r\nbare\rcr\n".to_vec();
    std::fs::write(server.root().join("cfg"), &text).unwrap();
    let mut c = Client::new(&server).await;
    c.send_to_listener(&request(1, "cfg", "NetAscii", &[])).await;
    assert_eq!(c.download(512).await.1, text);

    let mut c = Client::new(&server).await;
    c.send_to_listener(&request(1, "cfg", "mail", &[])).await;
    assert!(matches!(c.recv().await, Reply::Error(4, m) if m.contains("mode")));
    server.stop().await;
}

#[tokio::test]
async fn whole_blocks_end_with_an_empty_block() {
    let server = Server::start(opts()).await;
    let bytes = server.put("two-blocks", 1024);
    server.put("empty", 0);
    let mut c = Client::new(&server).await;
    c.rrq("two-blocks", &[]).await;
    let (sizes, got) = c.download(512).await;
    assert_eq!(sizes, [512, 512, 0]);
    assert!(got == bytes);
    let mut c = Client::new(&server).await;
    c.rrq("empty", &[("tsize", "0")]).await;
    assert_eq!(c.recv().await, Reply::Oack(pairs(&[("tsize", "0")])));
    c.ack(0).await;
    assert_eq!(c.download(512).await.0, [0]);
    server.stop().await;
}

#[tokio::test]
async fn block_numbers_roll_over_past_65535() {
    let server = Server::start(opts()).await;
    // 65536 + 100 full blocks of 8 bytes and a short one: block 65535 is
    // followed by 0, 1, ... (`download` checks each number)
    let len = 65_636 * 8 + 3;
    let bytes = server.put("big", len);
    let mut c = Client::new(&server).await;
    c.rrq("big", &[("blksize", "8")]).await;
    assert_eq!(c.recv().await, Reply::Oack(pairs(&[("blksize", "8")])));
    c.ack(0).await;
    let (sizes, got) = c.download(8).await;
    assert_eq!(sizes.len(), 65_637);
    assert!(got == bytes, "bytes differ after the roll-over");
    server.stop().await;
}

#[tokio::test]
async fn retransmits_on_timeout_never_on_duplicates() {
    let server = Server::start(TftpOptions { default_timeout: Duration::from_millis(300), ..opts() }).await;
    let bytes = server.put("kernel", 2000);

    // no ACK: DATA 1 again after the timeout
    let mut c = Client::new(&server).await;
    c.rrq("kernel", &[]).await;
    let first = c.recv().await;
    assert!(matches!(&first, Reply::Data(1, d) if d[..] == bytes[..512]));
    assert_eq!(c.recv().await, first, "want DATA 1 resent");
    c.ack(1).await;
    assert!(matches!(c.recv().await, Reply::Data(2, _)));

    // another port writing into the transfer gets ERROR 5; the transfer goes on
    let mut stranger = Client::new(&server).await;
    stranger.tid = c.tid;
    stranger.ack(2).await;
    assert!(matches!(stranger.recv().await, Reply::Error(5, _)));
    c.ack(2).await;
    assert!(matches!(c.recv().await, Reply::Data(3, _)));

    // a duplicate ACK 1 while DATA 2 waits (timeout 10 s, so a resend
    // now could only be the duplicate's doing): nothing is sent
    let mut c = Client::new(&server).await;
    c.rrq("kernel", &[("timeout", "10")]).await;
    assert_eq!(c.recv().await, Reply::Oack(pairs(&[("timeout", "10")])));
    c.ack(0).await;
    assert!(matches!(c.recv().await, Reply::Data(1, _)));
    c.ack(1).await;
    assert!(matches!(c.recv().await, Reply::Data(2, _)));
    c.ack(1).await;
    c.ack(1).await;
    assert_eq!(c.recv_within(Duration::from_secs(1)).await, None, "resent on a duplicate ACK");
    c.ack(2).await;
    assert!(matches!(c.recv().await, Reply::Data(3, _)));
    c.ack(3).await;
    assert!(matches!(c.recv().await, Reply::Data(4, d) if d.len() == 2000 - 3 * 512));
    c.ack(4).await;
    server.stop().await;
}

#[tokio::test]
async fn gives_up_after_its_retries() {
    let timeouts_before = recorded().get("ferric_tftp_transfers_total{result=timeout}");
    let server = Server::start(TftpOptions { retries: 2, default_timeout: Duration::from_millis(200), ..opts() }).await;
    server.put("kernel", 2000);
    let mut c = Client::new(&server).await;
    c.rrq("kernel", &[]).await;
    for _ in 0..3 {
        assert!(matches!(c.recv().await, Reply::Data(1, _)));
    }
    // a fourth would come 200 ms after the third
    assert_eq!(c.recv_within(Duration::from_secs(1)).await, None, "sent more than 1 + retries times");
    assert!(recorded().get("ferric_tftp_transfers_total{result=timeout}") > timeouts_before);
    server.stop().await;
}

#[tokio::test]
async fn an_error_in_reply_to_oack_ends_the_transfer_quietly() {
    let server = Server::start(TftpOptions { default_timeout: Duration::from_millis(300), ..opts() }).await;
    server.put("kernel", 2000);
    let mut c = Client::new(&server).await;
    c.rrq("kernel", &[("blksize", "1024")]).await;
    assert!(matches!(c.recv().await, Reply::Oack(_)));
    c.send(b"\0\x05\0\x08options refused\0").await;
    // still waiting, the server would resend the OACK after 300 ms
    assert_eq!(c.recv_within(Duration::from_millis(1500)).await, None);
    server.stop().await;
}

#[tokio::test]
async fn refusals_by_hand() {
    let server = Server::start(opts()).await;
    server.put("boot/kernel", 10);
    std::os::unix::fs::symlink("../secret", server.root().join("link")).unwrap();
    std::os::unix::fs::symlink(server.dir.path(), server.root().join("up")).unwrap();
    let hidden = server.dir.path().to_str().unwrap().to_string();
    for (name, code) in [
        ("../secret", 2),
        ("/../secret", 2),
        ("boot/../../secret", 2),
        ("..\\secret", 2),
        ("link", 2),
        ("up/secret", 2),
        ("boot", 2),
        ("missing", 1),
        // the leading slash is stripped: this is root/etc/passwd
        ("/etc/passwd", 1),
    ] {
        let mut c = Client::new(&server).await;
        c.rrq(name, &[]).await;
        let Reply::Error(got, message) = c.recv().await else { panic!("{name}: want ERROR {code}") };
        assert_eq!(got, code, "{name}: {message}");
        assert!(!message.contains(&hidden), "{name}: the server's path leaked: {message}");
    }

    // the listener takes read requests only, and never answers an ERROR
    let mut c = Client::new(&server).await;
    for (packet, code) in [
        (request(2, "boot/kernel", "octet", &[]), 2),
        (vec![0, 4, 0, 1], 4),
        (vec![0, 1], 4),
        (b"\0\x01no-mode".to_vec(), 4),
        (vec![0, 5, 0, 0, 0], 0),
    ] {
        c.send_to_listener(&packet).await;
        if code == 0 {
            assert_eq!(c.recv_within(Duration::from_millis(500)).await, None, "an ERROR was answered");
            continue;
        }
        let (from, reply) = c.recv_within(Duration::from_secs(5)).await.expect("no reply");
        assert_eq!(from, server.addr);
        assert!(matches!(reply, Reply::Error(got, _) if got == code), "{packet:?}: {reply:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_request_beyond_max_transfers_is_dropped_until_a_slot_frees() {
    let busy_before = recorded().get("ferric_tftp_transfers_total{result=busy}");
    let server = Server::start(TftpOptions { max_transfers: 1, ..opts() }).await;
    let bytes = server.put("small", 100);

    // the one transfer: DATA 1 unacknowledged, so it stays open
    let mut holder = Client::new(&server).await;
    holder.rrq("small", &[]).await;
    assert!(matches!(holder.recv().await, Reply::Data(1, _)));

    // unanswered (the firmware retransmits), and counted
    let mut second = Client::new(&server).await;
    second.rrq("small", &[]).await;
    let reply = second.recv_within(Duration::from_millis(1500)).await;
    assert!(reply.is_none(), "a request beyond the limit is not answered: {reply:?}");
    assert!(recorded().get("ferric_tftp_transfers_total{result=busy}") > busy_before);

    // once the first ends, the retransmitted request is served
    holder.ack(1).await;
    let mut served = None;
    for _ in 0..10 {
        second.rrq("small", &[]).await;
        match second.recv_within(Duration::from_millis(1000)).await {
            Some((_, Reply::Data(1, data))) => {
                second.ack(1).await;
                served = Some(data);
                break;
            }
            None => {}
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(served.expect("still busy 10 s after the first transfer ended"), bytes);
    server.stop().await;
}

#[tokio::test]
async fn cancel_ends_transfers_in_flight() {
    let server = Server::start(opts()).await;
    server.put("kernel", 2000);
    let mut c = Client::new(&server).await;
    c.rrq("kernel", &[]).await;
    assert!(matches!(c.recv().await, Reply::Data(1, _)));
    server.stop().await;
    assert_eq!(c.recv().await, Reply::Error(0, "server shutting down".into()));
}

// ---- metrics -------------------------------------------------------------

/// Every counter and gauge the process emitted, by `name{label=value,...}`
/// (gauges hold f64 bits). One per process: under `cargo test` the tests
/// share it, so a test reads differences, never totals.
#[derive(Default)]
struct Recorded(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Recorded {
    fn handle(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name =
            if labels.is_empty() { key.name().to_string() } else { format!("{}{{{}}}", key.name(), labels.join(",")) };
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).map_or(0, |v| v.load(Ordering::SeqCst))
    }
}

struct Recorder;

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(RECORDED.handle(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(RECORDED.handle(key))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

static RECORDED: LazyLock<Recorded> = LazyLock::new(Recorded::default);

fn recorded() -> &'static Recorded {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| metrics::set_global_recorder(Recorder).expect("a recorder was already installed"));
    &RECORDED
}
