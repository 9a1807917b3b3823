//! A read-only TFTP server for network boot: RFC 1350 read requests, with
//! the option extension (RFC 2347) and the `blksize`, `timeout` and `tsize`
//! options (RFC 2348, RFC 2349).
//!
//! What the server does, packet by packet:
//!
//! * **Requests.** The listening socket only takes requests. An accepted
//!   read request (RRQ) starts a transfer on a socket of its own, bound to an
//!   ephemeral port on the listener's IP: the transfer id (TID) of RFC 1350.
//!   Every reply to that request, errors included, comes from the transfer's
//!   socket; a packet reaching it from any other address gets ERROR 5 and
//!   changes nothing. Write requests get ERROR 2, other packets ERROR 4, both
//!   from the listener; an ERROR is never answered. Bind the listener to a
//!   specific address: bound to a wildcard, transfers are too, and the kernel
//!   picks their source address by route.
//! * **Modes.** `octet`, which PXE firmware uses. `netascii` is accepted and
//!   served byte for byte, *without* CR/LF translation: boot files are binary
//!   and translating them would make `tsize` wrong. Any other mode: ERROR 4.
//! * **Options.** `blksize` (8..=65464, lowered to
//!   [`TftpOptions::max_blksize`]), `timeout` (1..=255 seconds, the
//!   retransmission timeout) and `tsize` (answered with the file's size).
//!   The first occurrence of a name counts. Unknown options and values out of
//!   range are ignored, never echoed. If any option is accepted, the server
//!   sends OACK and waits for ACK 0 before DATA 1; an ERROR in reply (code 8
//!   when the client refuses the options) ends the transfer without a word.
//! * **Data.** Lock-step: DATA n, then wait for ACK n. DATA n is resent only
//!   when no ACK n came within the timeout, at most [`TftpOptions::retries`]
//!   times, then the transfer is given up. An ACK for another block (a
//!   duplicate) is ignored, so a late ACK never doubles the traffic (the
//!   sorcerer's apprentice bug of RFC 1350). A block shorter than the block
//!   size ends the file, so a file whose size is a multiple of it ends with an
//!   empty DATA. Block numbers wrap from 65535 to 0. Files are read block by
//!   block, never whole.
//! * **Names.** Relative to the root; leading `/` are stripped (PXE clients
//!   send `/pxelinux.0`). A name with `..`, a backslash or NUL is refused;
//!   the rest is resolved with symlinks followed and must still be a regular
//!   file inside the root. Refusals say why without naming server paths.
//! * **Limits.** At most [`TftpOptions::max_transfers`] at once; a request
//!   beyond that is dropped unanswered (and counted `busy`): PXE firmware
//!   retransmits an unanswered RRQ with back-off, whereas an ERROR makes it
//!   give up the boot — in a boot storm, nodes wait instead of failing.
//! * **Shutdown.** When the token is cancelled the listener stops, every
//!   transfer sends ERROR 0 "server shutting down" and ends, and
//!   [`TftpServer::serve`] returns once they all have.
//!
//! Metrics: `ferric_tftp_transfers_total{result}`, one per request, `ok`
//! (last block acknowledged), `not_found` (ERROR 1), `denied` (ERROR 2:
//! outside the root, not a regular file, unreadable, write request), `busy`,
//! `timeout` (retries exhausted), `error` (malformed request, unsupported
//! mode, an ERROR from the client, I/O errors, shutdown);
//! `ferric_tftp_bytes_sent_total` (DATA payload, retransmissions included);
//! `ferric_tftp_active_transfers`.
//!
//! The root is trusted: a path is checked, then opened (without following a
//! final symlink), so whoever can write into the root could still race a
//! directory swap between the two.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// The block size without a `blksize` option (RFC 1350).
const DEFAULT_BLKSIZE: u16 = 512;
/// The `blksize` values RFC 2348 allows.
const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;
/// RFC 2347 keeps a request within 512 bytes; room for clients that do not.
const MAX_REQUEST: usize = 2048;
/// File bytes read at once: a read goes through tokio's blocking pool, so
/// one trip per 64 KiB rather than per block (8 bytes at the smallest).
const READ_AHEAD: usize = 64 * 1024;
/// What a transfer socket receives is an ACK or an ERROR; longer is cut.
const MAX_REPLY: usize = 1024;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// ERROR codes (RFC 1350, RFC 2347).
const NOT_DEFINED: u16 = 0;
const FILE_NOT_FOUND: u16 = 1;
const ACCESS_VIOLATION: u16 = 2;
const ILLEGAL_OPERATION: u16 = 4;
const UNKNOWN_TID: u16 = 5;

#[derive(Debug, Clone)]
pub struct TftpOptions {
    /// Transfers at once; each holds a socket, an open file and a block
    /// buffer of up to `max_blksize` bytes.
    pub max_transfers: usize,
    /// The largest `blksize` granted (8..=65464). The default 1468 is a
    /// 1500-byte Ethernet MTU less the IPv4, UDP and TFTP headers: a DATA
    /// that needs IP fragments is what old PXE ROMs lose.
    pub max_blksize: u16,
    /// Retransmissions of one packet before the transfer is given up.
    pub retries: u32,
    /// Retransmission timeout when the client asks for none.
    pub default_timeout: Duration,
}

impl Default for TftpOptions {
    fn default() -> Self {
        TftpOptions { max_transfers: 64, max_blksize: 1468, retries: 5, default_timeout: Duration::from_secs(1) }
    }
}

pub struct TftpServer {
    socket: UdpSocket,
    local_addr: SocketAddr,
    /// Canonical, so a resolved path can be checked against it.
    root: PathBuf,
    opts: TftpOptions,
}

impl TftpServer {
    /// Binds the listening UDP socket (errors name the address, or the root
    /// if it is not a directory, or the option that is out of range).
    pub async fn bind(addr: SocketAddr, root: PathBuf, opts: TftpOptions) -> io::Result<TftpServer> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if opts.max_transfers == 0 {
            return Err(invalid("TFTP max_transfers must be at least 1".into()));
        }
        if !BLKSIZE_RANGE.contains(&opts.max_blksize) {
            return Err(invalid(format!("TFTP max_blksize {} is outside 8..=65464", opts.max_blksize)));
        }
        if opts.default_timeout.is_zero() {
            return Err(invalid("TFTP default_timeout must not be zero".into()));
        }
        let named = |e: io::Error| io::Error::new(e.kind(), format!("TFTP root {}: {e}", root.display()));
        let canonical = tokio::fs::canonicalize(&root).await.map_err(named)?;
        if !tokio::fs::metadata(&canonical).await.map_err(named)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TFTP listener on {addr}: {e}")))?;
        let local_addr = socket.local_addr()?;
        Ok(TftpServer { socket, local_addr, root: canonical, opts })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires; in-flight transfers are cancelled too.
    pub async fn serve(self, cancel: CancellationToken) {
        let TftpServer { socket, local_addr, root, opts } = self;
        let permits = Arc::new(Semaphore::new(opts.max_transfers));
        let shared = Arc::new(Shared { ip: local_addr.ip(), root, opts });
        let mut transfers = JoinSet::new();
        let mut buf = vec![0u8; MAX_REQUEST];
        tracing::info!(addr = %local_addr, root = %shared.root.display(), "TFTP server listening");
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = transfers.join_next(), if !transfers.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "TFTP transfer task failed");
                    }
                    continue;
                }
                received = socket.recv_from(&mut buf) => match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(addr = %local_addr, error = %e, "TFTP listener receive failed");
                        // an error that persists must not spin the loop
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (code, message, outcome) = match admit(&buf[..n]) {
                Admission::Ignore => continue,
                Admission::Refuse { code, message, outcome } => (code, message, outcome),
                Admission::Start(request) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (shared, cancel) = (shared.clone(), cancel.clone());
                        transfers.spawn(async move {
                            let _slot = Slot::new(permit);
                            count(transfer(&shared, request, peer, cancel).await);
                        });
                        continue;
                    }
                    Err(_) => {
                        // unanswered: the firmware retransmits its request
                        tracing::debug!(client = %peer, "TFTP request dropped: every transfer slot is busy");
                        count(Outcome::Busy);
                        continue;
                    }
                },
            };
            tracing::debug!(client = %peer, code, message, "TFTP request refused");
            if let Err(e) = socket.send_to(&encode_error(code, &message), peer).await {
                tracing::debug!(client = %peer, error = %e, "TFTP error not sent");
            }
            count(outcome);
        }
        while let Some(done) = transfers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "TFTP transfer task failed");
            }
        }
        tracing::info!(addr = %local_addr, "TFTP server stopped");
    }
}

/// What the listener does with a datagram, busy or not aside.
#[derive(Debug, PartialEq)]
enum Admission {
    Start(Request),
    /// Answer with ERROR `code` from the listener.
    Refuse {
        code: u16,
        message: String,
        outcome: Outcome,
    },
    /// An ERROR: never answered, lest two hosts trade errors forever.
    Ignore,
}

fn admit(datagram: &[u8]) -> Admission {
    let refuse = |code, message: String, outcome| Admission::Refuse { code, message, outcome };
    match parse(datagram) {
        Ok(Packet::Rrq(request)) => Admission::Start(request),
        Ok(Packet::Wrq(_)) => {
            refuse(ACCESS_VIOLATION, "access violation: this server is read-only".into(), Outcome::Denied)
        }
        Ok(Packet::Error { .. }) => Admission::Ignore,
        Ok(Packet::Ack(_) | Packet::ServerOnly(_)) => {
            refuse(ILLEGAL_OPERATION, "only read requests are served on this port".into(), Outcome::Failed)
        }
        Err(e) => refuse(ILLEGAL_OPERATION, format!("malformed request: {e}"), Outcome::Failed),
    }
}

/// What every transfer reads.
struct Shared {
    /// Transfers bind here: RFC 1350 has the TID on the address asked.
    ip: IpAddr,
    root: PathBuf,
    opts: TftpOptions,
}

/// A transfer's place: its permit and its share of the active gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(ferric_common::metrics::TFTP_ACTIVE_TRANSFERS).increment(1.0);
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(ferric_common::metrics::TFTP_ACTIVE_TRANSFERS).decrement(1.0);
    }
}

/// How a request ended, as counted in `ferric_tftp_transfers_total`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Sent,
    NotFound,
    Denied,
    Busy,
    TimedOut,
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Sent => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Denied => "denied",
            Outcome::Busy => "busy",
            Outcome::TimedOut => "timeout",
            Outcome::Failed => "error",
        }
    }
}

fn count(outcome: Outcome) {
    metrics::counter!(ferric_common::metrics::TFTP_TRANSFERS_TOTAL, "result" => outcome.label()).increment(1);
}

/// Serves one read request from a socket of its own.
async fn transfer(shared: &Shared, request: Request, peer: SocketAddr, cancel: CancellationToken) -> Outcome {
    let socket = match UdpSocket::bind((shared.ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, ip = %shared.ip, error = %e, "TFTP transfer socket not bound");
            return Outcome::Failed;
        }
    };
    let mut link = Link {
        socket,
        peer,
        timeout: shared.opts.default_timeout,
        retries: shared.opts.retries,
        cancel,
        bytes_sent: metrics::counter!(ferric_common::metrics::TFTP_BYTES_SENT_TOTAL),
    };
    let name = request.filename.as_str();
    if !request.mode.eq_ignore_ascii_case("octet") && !request.mode.eq_ignore_ascii_case("netascii") {
        link.send_error(ILLEGAL_OPERATION, &format!("unsupported mode {:?}: use octet", request.mode)).await;
        return Outcome::Failed;
    }
    let (file, size) = match open(&shared.root, name).await {
        Ok(opened) => opened,
        Err(refusal) => return link.refuse(refusal, name).await,
    };
    let agreed = negotiate(&request.options, shared.opts.max_blksize, size);
    if let Some(secs) = agreed.timeout {
        link.timeout = Duration::from_secs(secs.into());
    }
    let sent = async {
        if !agreed.oack.is_empty() {
            link.exchange(&encode_oack(&agreed.oack), 0, 0).await?;
        }
        link.send_file(file, agreed.blksize).await
    };
    match sent.await {
        Ok(()) => {
            tracing::debug!(client = %peer, file = ?name, size, blksize = agreed.blksize, "TFTP transfer done");
            Outcome::Sent
        }
        Err(stop) => link.stopped(stop, name).await,
    }
}

/// A transfer's socket and the client it talks to.
struct Link {
    socket: UdpSocket,
    peer: SocketAddr,
    timeout: Duration,
    retries: u32,
    cancel: CancellationToken,
    /// `ferric_tftp_bytes_sent_total`, looked up once rather than per block.
    bytes_sent: metrics::Counter,
}

/// Why a transfer stopped before the end.
#[derive(Debug)]
enum Stop {
    TimedOut,
    ClientError { code: u16, message: String },
    Cancelled,
    Read(io::Error),
    Socket(io::Error),
}

impl Link {
    async fn send_file(&self, file: File, blksize: u16) -> Result<(), Stop> {
        let mut file = BufReader::with_capacity(READ_AHEAD, file);
        let mut packet = vec![0u8; 4 + usize::from(blksize)];
        packet[..2].copy_from_slice(&DATA.to_be_bytes());
        let mut block: u16 = 1;
        loop {
            let len = read_block(&mut file, &mut packet[4..]).await.map_err(Stop::Read)?;
            packet[2..4].copy_from_slice(&block.to_be_bytes());
            self.exchange(&packet[..4 + len], block, len).await?;
            if len < usize::from(blksize) {
                return Ok(());
            }
            block = next_block(block);
        }
    }

    /// Sends `packet` (carrying `payload` file bytes) until ACK `block`
    /// arrives, at most `1 + retries` times.
    async fn exchange(&self, packet: &[u8], block: u16, payload: usize) -> Result<(), Stop> {
        let mut buf = [0u8; MAX_REPLY];
        for _ in 0..=self.retries {
            self.socket.send_to(packet, self.peer).await.map_err(Stop::Socket)?;
            self.bytes_sent.increment(payload as u64);
            // a deadline, not a timer reset on every packet: duplicates
            // must not postpone the retransmission
            let deadline = Instant::now() + self.timeout;
            loop {
                let (n, from) = tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = sleep_until(deadline) => break,
                    received = self.socket.recv_from(&mut buf) => received.map_err(Stop::Socket)?,
                };
                if from != self.peer {
                    let _ = self.socket.send_to(&encode_error(UNKNOWN_TID, "unknown transfer ID"), from).await;
                    continue;
                }
                match parse(&buf[..n]) {
                    Ok(Packet::Ack(acked)) if acked == block => return Ok(()),
                    Ok(Packet::Error { code, message }) => return Err(Stop::ClientError { code, message }),
                    _ => {}
                }
            }
        }
        Err(Stop::TimedOut)
    }

    async fn refuse(&self, refusal: Refusal, name: &str) -> Outcome {
        let peer = self.peer;
        match &refusal {
            Refusal::Escape(why) => {
                tracing::warn!(client = %peer, file = ?name, why, "TFTP request outside the root refused")
            }
            Refusal::Io(e) => tracing::warn!(client = %peer, file = ?name, error = %e, "TFTP file not opened"),
            _ => tracing::debug!(client = %peer, file = ?name, ?refusal, "TFTP request refused"),
        }
        let (code, message) = refusal.error();
        self.send_error(code, &message).await;
        refusal.outcome()
    }

    /// Logs why the transfer of `name` stopped and tells the client if it
    /// is still listening.
    async fn stopped(&self, stop: Stop, name: &str) -> Outcome {
        let peer = self.peer;
        match stop {
            Stop::TimedOut => {
                tracing::info!(client = %peer, file = ?name, "TFTP transfer timed out");
                return Outcome::TimedOut;
            }
            Stop::ClientError { code, message } => {
                tracing::debug!(client = %peer, file = ?name, code, message, "TFTP client ended the transfer")
            }
            Stop::Cancelled => self.send_error(NOT_DEFINED, "server shutting down").await,
            Stop::Read(e) => {
                tracing::warn!(client = %peer, file = ?name, error = %e, "TFTP file read failed");
                self.send_error(NOT_DEFINED, "error reading the file").await;
            }
            Stop::Socket(e) => tracing::warn!(client = %peer, file = ?name, error = %e, "TFTP transfer socket failed"),
        }
        Outcome::Failed
    }

    /// Best effort: the transfer ends either way.
    async fn send_error(&self, code: u16, message: &str) {
        if let Err(e) = self.socket.send_to(&encode_error(code, message), self.peer).await {
            tracing::debug!(client = %self.peer, error = %e, "TFTP error not sent");
        }
    }
}

/// Fills `buf` unless the file ends first; returns how much it read.
async fn read_block(file: &mut BufReader<File>, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The block after `block`: past 65535 comes 0.
fn next_block(block: u16) -> u16 {
    block.wrapping_add(1)
}

// ---- packets -------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Packet {
    Rrq(Request),
    Wrq(Request),
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// DATA or OACK: what a server sends, never receives.
    ServerOnly(u16),
}

#[derive(Debug, PartialEq)]
struct Request {
    filename: String,
    mode: String,
    /// Names lowercased (RFC 2347: case-insensitive), in the client's order.
    options: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum Malformed {
    #[error("shorter than 4 bytes")]
    Short,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("{0} is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("{0} is not UTF-8")]
    NotText(&'static str),
}

fn parse(packet: &[u8]) -> Result<Packet, Malformed> {
    if packet.len() < 4 {
        return Err(Malformed::Short);
    }
    let opcode = u16::from_be_bytes([packet[0], packet[1]]);
    let body = &packet[2..];
    match opcode {
        RRQ => Ok(Packet::Rrq(parse_request(body)?)),
        WRQ => Ok(Packet::Wrq(parse_request(body)?)),
        ACK => Ok(Packet::Ack(u16::from_be_bytes([body[0], body[1]]))),
        ERROR => {
            let text = &body[2..];
            // a message cut short (or sent without its NUL) is still an ERROR
            let text = text.split(|&b| b == 0).next().unwrap_or_default();
            Ok(Packet::Error {
                code: u16::from_be_bytes([body[0], body[1]]),
                message: String::from_utf8_lossy(text).into_owned(),
            })
        }
        DATA | OACK => Ok(Packet::ServerOnly(opcode)),
        other => Err(Malformed::Opcode(other)),
    }
}

fn parse_request(mut body: &[u8]) -> Result<Request, Malformed> {
    let filename = field(&mut body, "file name")?.to_string();
    let mode = field(&mut body, "mode")?.to_string();
    let mut options = Vec::new();
    while !body.is_empty() {
        let name = field(&mut body, "option name")?;
        if name.is_empty() {
            continue; // padding some clients send
        }
        if body.is_empty() {
            break; // a name without a value: ignored like an unknown option
        }
        let value = field(&mut body, "option value")?;
        options.push((name.to_ascii_lowercase(), value.to_string()));
    }
    Ok(Request { filename, mode, options })
}

/// The NUL-terminated string at the front of `rest`, which moves past it.
fn field<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a str, Malformed> {
    let end = rest.iter().position(|&b| b == 0).ok_or(Malformed::Unterminated(what))?;
    let text = std::str::from_utf8(&rest[..end]).map_err(|_| Malformed::NotText(what))?;
    *rest = &rest[end + 1..];
    Ok(text)
}

fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out.push(0);
    out
}

fn encode_oack(options: &[(&'static str, String)]) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

// ---- options -------------------------------------------------------------

/// What the server grants; `oack` is empty when it grants nothing.
#[derive(Debug, PartialEq)]
struct Agreed {
    blksize: u16,
    timeout: Option<u8>,
    oack: Vec<(&'static str, String)>,
}

fn negotiate(options: &[(String, String)], max_blksize: u16, file_size: u64) -> Agreed {
    let mut agreed = Agreed { blksize: DEFAULT_BLKSIZE, timeout: None, oack: Vec::new() };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        match name.as_str() {
            "blksize" => {
                if let Some(size) = value.parse::<u16>().ok().filter(|s| BLKSIZE_RANGE.contains(s)) {
                    agreed.blksize = size.min(max_blksize);
                    agreed.oack.push(("blksize", agreed.blksize.to_string()));
                }
            }
            "timeout" => {
                if let Some(secs) = value.parse::<u8>().ok().filter(|&s| s >= 1) {
                    agreed.timeout = Some(secs);
                    agreed.oack.push(("timeout", secs.to_string()));
                }
            }
            "tsize" if value.parse::<u64>().is_ok() => agreed.oack.push(("tsize", file_size.to_string())),
            _ => {}
        }
    }
    agreed
}

// ---- names ---------------------------------------------------------------

/// Why a name is not served.
#[derive(Debug)]
enum Refusal {
    NotFound,
    /// The name reaches outside the root: someone is probing.
    Escape(&'static str),
    /// Inside the root but not servable (a directory, unreadable, ...).
    NotServable(&'static str),
    Io(io::Error),
}

impl Refusal {
    /// The ERROR sent: it says why, never where on the server.
    fn error(&self) -> (u16, String) {
        match self {
            Refusal::NotFound => (FILE_NOT_FOUND, "file not found".into()),
            Refusal::Escape(why) | Refusal::NotServable(why) => (ACCESS_VIOLATION, format!("access violation: {why}")),
            Refusal::Io(_) => (NOT_DEFINED, "error opening the file".into()),
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            Refusal::NotFound => Outcome::NotFound,
            Refusal::Escape(_) | Refusal::NotServable(_) => Outcome::Denied,
            Refusal::Io(_) => Outcome::Failed,
        }
    }
}

/// The requested name as a path relative to the root, checked by its text
/// alone: leading `/` stripped, empty and `.` segments dropped.
fn relative_path(name: &str) -> Result<PathBuf, Refusal> {
    if name.contains('\0') {
        return Err(Refusal::Escape("NUL in the file name"));
    }
    if name.contains('\\') {
        return Err(Refusal::Escape("backslash in the file name"));
    }
    let mut path = PathBuf::new();
    for segment in name.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(Refusal::Escape("'..' in the file name")),
            s => path.push(s),
        }
    }
    if path.as_os_str().is_empty() {
        return Err(Refusal::NotServable("no file name"));
    }
    Ok(path)
}

/// Opens `name` under the canonical `root`; returns the file and its size.
async fn open(root: &Path, name: &str) -> Result<(File, u64), Refusal> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let not_opened = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Refusal::NotFound,
        io::ErrorKind::PermissionDenied => Refusal::NotServable("permission denied"),
        _ => Refusal::Io(e),
    };
    let path = tokio::fs::canonicalize(root.join(relative_path(name)?)).await.map_err(not_opened)?;
    if !path.starts_with(root) {
        return Err(Refusal::Escape("outside the TFTP root"));
    }
    let mut options = std::fs::OpenOptions::new();
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; O_NOFOLLOW: the path was checked without a final symlink
    options.read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    let file = tokio::fs::OpenOptions::from(options).open(&path).await.map_err(not_opened)?;
    let meta = file.metadata().await.map_err(Refusal::Io)?;
    if !meta.is_file() {
        return Err(Refusal::NotServable("not a regular file"));
    }
    Ok((file, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut out = RRQ.to_be_bytes().to_vec();
        for s in [name, mode].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out
    }

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_a_read_request_with_options() {
        let packet = rrq("/pxelinux.0", "OCTET", &[("BlkSize", "1428"), ("tsize", "0")]);
        assert_eq!(
            parse(&packet),
            Ok(Packet::Rrq(Request {
                filename: "/pxelinux.0".into(),
                mode: "OCTET".into(),
                options: opts(&[("blksize", "1428"), ("tsize", "0")]),
            }))
        );
    }

    #[test]
    fn parses_write_request_ack_and_error() {
        let mut wrq = rrq("f", "octet", &[]);
        wrq[1] = 2;
        assert!(matches!(parse(&wrq), Ok(Packet::Wrq(r)) if r.filename == "f"));
        assert_eq!(parse(&[0, 4, 0xff, 0xfe]), Ok(Packet::Ack(0xfffe)));
        assert_eq!(parse(b"\0\x05\0\x08no\0"), Ok(Packet::Error { code: 8, message: "no".into() }));
        // without its NUL, the message is still read
        assert_eq!(parse(b"\0\x05\0\x01gone"), Ok(Packet::Error { code: 1, message: "gone".into() }));
        assert_eq!(parse(b"\0\x03\0\x01data"), Ok(Packet::ServerOnly(DATA)));
    }

    #[test]
    fn ignores_option_padding_and_a_dangling_name() {
        let mut packet = rrq("f", "octet", &[("blksize", "1024")]);
        packet.extend_from_slice(b"\0\0tsize\0");
        let Ok(Packet::Rrq(r)) = parse(&packet) else { panic!("not parsed") };
        assert_eq!(r.options, opts(&[("blksize", "1024")]));
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(parse(&[0, 1, 0]), Err(Malformed::Short));
        assert_eq!(parse(&[0, 9, 0, 0]), Err(Malformed::Opcode(9)));
        assert_eq!(parse(b"\0\x01name\0octet"), Err(Malformed::Unterminated("mode")));
        assert_eq!(parse(b"\0\x01na\xffme\0octet\0"), Err(Malformed::NotText("file name")));
        assert_eq!(parse(b"\0\x01name\0octet\0blksize\x00512"), Err(Malformed::Unterminated("option value")));
    }

    #[test]
    fn encodes_error_and_oack() {
        assert_eq!(encode_error(1, "file not found"), b"\0\x05\0\x01file not found\0");
        assert_eq!(
            encode_oack(&[("blksize", "1428".into()), ("tsize", "42".into())]),
            b"\0\x06blksize\x001428\0tsize\x0042\0"
        );
    }

    #[test]
    fn negotiation_grants_clamps_and_ignores() {
        let agreed = negotiate(
            &opts(&[("windowsize", "8"), ("blksize", "9000"), ("tsize", "0"), ("timeout", "3"), ("blksize", "512")]),
            1468,
            123_456,
        );
        assert_eq!(
            agreed,
            Agreed {
                blksize: 1468,
                timeout: Some(3),
                oack: vec![("blksize", "1468".into()), ("tsize", "123456".into()), ("timeout", "3".into())],
            }
        );
        // within the configured max, the client's size stands
        assert_eq!(negotiate(&opts(&[("blksize", "1024")]), 1468, 0).blksize, 1024);
        assert_eq!(negotiate(&opts(&[("blksize", "8")]), 1468, 0).blksize, 8);
    }

    #[test]
    fn negotiation_ignores_values_out_of_range() {
        for (name, value) in [
            ("blksize", "7"),
            ("blksize", "65465"),
            ("blksize", "big"),
            ("timeout", "0"),
            ("timeout", "256"),
            ("tsize", "-1"),
        ] {
            let agreed = negotiate(&opts(&[(name, value)]), 1468, 10);
            assert_eq!(agreed, Agreed { blksize: 512, timeout: None, oack: vec![] }, "{name}={value}");
        }
    }

    #[test]
    fn the_listener_starts_read_requests_only() {
        assert!(matches!(admit(&rrq("f", "octet", &[])), Admission::Start(r) if r.filename == "f"));
        let mut wrq = rrq("f", "octet", &[]);
        wrq[1] = 2;
        let refused = |d: &[u8]| match admit(d) {
            Admission::Refuse { code, outcome, .. } => Some((code, outcome)),
            _ => None,
        };
        assert_eq!(refused(&wrq), Some((ACCESS_VIOLATION, Outcome::Denied)));
        assert_eq!(refused(&[0, 4, 0, 1]), Some((ILLEGAL_OPERATION, Outcome::Failed)));
        assert_eq!(refused(b"\0\x03\0\x01data"), Some((ILLEGAL_OPERATION, Outcome::Failed)));
        assert_eq!(refused(&[0, 1]), Some((ILLEGAL_OPERATION, Outcome::Failed)));
        assert_eq!(admit(b"\0\x05\0\x00oops\0"), Admission::Ignore);
    }

    #[test]
    fn block_numbers_wrap_to_zero() {
        assert_eq!(next_block(1), 2);
        assert_eq!(next_block(65535), 0);
        assert_eq!(next_block(0), 1);
    }

    #[test]
    fn names_are_confined_by_their_text() {
        let ok = |name: &str| relative_path(name).map(|p| p.to_string_lossy().into_owned()).ok();
        assert_eq!(ok("/pxelinux.0").as_deref(), Some("pxelinux.0"));
        assert_eq!(ok("//boot/./grub//grub.cfg").as_deref(), Some("boot/grub/grub.cfg"));
        assert_eq!(ok("a..b/..c").as_deref(), Some("a..b/..c"));
        for name in ["../secret", "/../secret", "boot/../../secret", "a/..", "..\\secret", "boot\\x", "a\0b"] {
            assert!(matches!(relative_path(name), Err(Refusal::Escape(_))), "{name:?}");
        }
        for name in ["", "/", "./", "//."] {
            assert!(matches!(relative_path(name), Err(Refusal::NotServable(_))), "{name:?}");
        }
    }

    #[tokio::test]
    async fn resolved_paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/kernel"), b"kernel").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("outdir")).unwrap();
        std::os::unix::fs::symlink("boot/kernel", root.join("in")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let root = std::fs::canonicalize(&root).unwrap();

        let (_, size) = open(&root, "/boot/kernel").await.unwrap();
        assert_eq!(size, 6);
        let (_, size) = open(&root, "in").await.unwrap();
        assert_eq!(size, 6);
        assert!(matches!(open(&root, "out").await, Err(Refusal::Escape(_))));
        assert!(matches!(open(&root, "outdir/secret").await, Err(Refusal::Escape(_))));
        assert!(matches!(open(&root, "missing").await, Err(Refusal::NotFound)));
        assert!(matches!(open(&root, "dangling").await, Err(Refusal::NotFound)));
        assert!(matches!(open(&root, "boot/kernel/x").await, Err(Refusal::NotFound)));
        assert!(matches!(open(&root, "boot").await, Err(Refusal::NotServable(_))));
        // a FIFO would block an ordinary open until a writer came
        let fifo = tokio::time::timeout(Duration::from_secs(5), open(&root, "fifo")).await.expect("open hung");
        assert!(matches!(fifo, Err(Refusal::NotServable(_))));
    }

    #[test]
    fn refusals_never_name_server_paths() {
        for refusal in [Refusal::NotFound, Refusal::Escape("x"), Refusal::Io(io::Error::other("/srv/tftp/x"))] {
            let (_, message) = refusal.error();
            assert!(!message.contains('/'), "{message}");
        }
    }
}
