//! TLS for Ferric's listeners and its gRPC clients, on rustls with the
//! one crypto provider (ring).
//!
//! * [`ReloadingCert`]: a certificate chain and key read from PEM files
//!   and read again when the files change (a renewal by cert-manager, by
//!   an ACME client or by hand): every new handshake gets the newest pair,
//!   no restart. A pair that does not load (a key that does not match the
//!   certificate: the files are half-written) keeps the previous one in
//!   service and is tried again at the next check.
//! * [`server_config`]: a listener's rustls configuration, optionally
//!   requiring a client certificate issued by a CA (mutual TLS).
//! * [`GrpcTls`]: the gRPC hop between API processes (and `ferricctl`) and
//!   conductors, always mutual: one CA issues the conductors' and the
//!   clients' certificates; a conductor accepts only clients presenting a
//!   certificate of that CA, and a client checks that the conductor's
//!   certificate names the host of the URL it advertises in the ring
//!   (`docs/security.md`). [`crate::rpc::endpoint`] is the one channel
//!   builder everybody uses.
//! * [`incoming`]: TLS connections accepted on a listener, handshakes run
//!   concurrently and bounded in time (a client that connects and says
//!   nothing holds no accept slot).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How often, at most, a [`ReloadingCert`] looks at its files (on a
/// handshake): a renewed certificate is served within this long, and a
/// busy listener costs two `stat` calls a second, not two per handshake.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Handshakes a listener runs at once in [`incoming`]; beyond it new
/// connections wait in the kernel's backlog. Each is bounded in time too.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider of every TLS configuration Ferric builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("reading certificates from {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("reading certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError(format!("reading a private key from {}: {e}", path.display())))
}

/// A root store of the CA certificates in a PEM file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| TlsError(format!("CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// What identifies a version of a file: a rename (inode), a rewrite in
/// place (modification time, length).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(u64, SystemTime, u64)>>);

impl Stamp {
    fn of(paths: &[&Path]) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(
            paths
                .iter()
                .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.ino(), m.modified().ok()?, m.len()))))
                .collect(),
        )
    }
}

/// Whether a set of files changed since last asked, looking at most once
/// per [`RELOAD_CHECK_INTERVAL`].
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    state: Mutex<(Stamp, Instant)>,
}

impl FileWatch {
    pub fn new(paths: Vec<PathBuf>) -> FileWatch {
        let stamp = Stamp::of(&paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        FileWatch { paths, state: Mutex::new((stamp, Instant::now())) }
    }

    /// True once after the files changed (and only when the last look was
    /// longer than the check interval ago).
    pub fn changed(&self) -> bool {
        let mut st = self.state.lock().expect("file watch");
        if st.1.elapsed() < RELOAD_CHECK_INTERVAL {
            return false;
        }
        st.1 = Instant::now();
        let now = Stamp::of(&self.paths.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        if now == st.0 {
            return false;
        }
        st.0 = now;
        true
    }
}

/// A certificate chain and its key from PEM files, read again when they
/// change (see the module doc).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    watch: FileWatch,
    current: Mutex<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Reads the pair now: a pair that does not load is refused at start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let watch = FileWatch::new(vec![cert.to_path_buf(), key.to_path_buf()]);
        let pair = Self::read(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            watch,
            current: Mutex::new(Arc::new(pair)),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let chain = read_certs(cert)?;
        let key_der = read_key(key)?;
        CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
            TlsError(format!("the key in {} does not fit the certificate in {}: {e}", key.display(), cert.display()))
        })
    }

    /// The pair to serve now, read again first when the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        if self.watch.changed() {
            match Self::read(&self.cert, &self.key) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *self.current.lock().expect("certificate") = Arc::new(pair);
                }
                Err(e) => {
                    tracing::warn!("TLS certificate not reloaded, the previous one stays in service: {e}");
                    // look again at the next check, even if nothing moves
                    // (the key may be written after the certificate)
                    let mut st = self.watch.state.lock().expect("file watch");
                    st.0 = Stamp(Vec::new());
                }
            }
        }
        self.current.lock().expect("certificate").clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A listener's TLS configuration: its certificate (reloaded on change),
/// and with `client_ca` a client certificate issued by that CA required
/// of every client. `alpn`: the protocols offered (`h2`, `http/1.1`).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(cert);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The certificate pair of a TLS listener from two config keys that are
/// set together or not at all: `None` when both are empty.
pub fn listener_cert(
    cert_key: &str,
    cert: &Path,
    key_key: &str,
    key: &Path,
) -> Result<Option<Arc<ReloadingCert>>, TlsError> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => ReloadingCert::load(cert, key).map(Some).map_err(|e| TlsError(format!("{cert_key}: {e}"))),
        _ => Err(TlsError(format!("{cert_key} and {key_key} are set together or not at all"))),
    }
}

/// The gRPC hop's mutual TLS (`[grpc]`): the CA that issues every
/// certificate of the hop, and this process's own certificate — a
/// conductor's serves and, for its own reachability check, also
/// authenticates it as a client; an API process's or `ferricctl`'s
/// authenticates it to conductors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl GrpcTls {
    /// From `[grpc]`: `None` when TLS is off (all three keys empty).
    pub fn from_config(g: &crate::config::GrpcConfig) -> Option<GrpcTls> {
        (!g.ca_file.as_os_str().is_empty()).then(|| GrpcTls {
            ca: g.ca_file.clone(),
            cert: g.cert_file.clone(),
            key: g.key_file.clone(),
        })
    }

    /// The client side: tonic's TLS settings for a conductor at `host`
    /// (the host of its advertised URL, which its certificate must name).
    pub fn client_config(&self, host: &str) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| TlsError(format!("reading {}: {e}", p.display())));
        let ca = read(&self.ca)?;
        // the files are checked here so that a bad one is named, not
        // reported as a handshake failure
        read_roots(&self.ca)?;
        ReloadingCert::read(&self.cert, &self.key)?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']')))
    }

    /// The server side: a conductor's gRPC listener, requiring a client
    /// certificate of the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert = ReloadingCert::load(&self.cert, &self.key)?;
        server_config(cert, Some(&self.ca), &[b"h2"])
    }

    /// Watches the client's files, so that a channel cache can drop its
    /// channels when a renewed certificate is to be presented.
    pub fn watch(&self) -> FileWatch {
        FileWatch::new(vec![self.ca.clone(), self.cert.clone(), self.key.clone()])
    }
}

/// TLS connections accepted on `listener` until `shutdown`: each
/// handshake on its own task, at most [`MAX_CONCURRENT_HANDSHAKES`] at
/// once, each within `handshake_timeout`. A failed handshake (no client
/// certificate, one of another CA, not TLS at all) closes that connection
/// and is logged; the listener carries on.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) -> tokio::sync::mpsc::Receiver<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("handshake slots"),
                () = shutdown.cancelled() => return,
            };
            let (tcp, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: pause, as axum's accept does
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate for 127.0.0.1 it issued, as PEM.
    fn ca_and_leaf(cn: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{cn} CA"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    /// The leaf's DER as text: its common name is in it verbatim.
    fn common_name(k: &CertifiedKey) -> String {
        String::from_utf8_lossy(k.cert[0].as_ref()).to_string()
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (_, c1, k1) = ca_and_leaf("first-leaf");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let r = ReloadingCert::load(&cert, &key).unwrap();
        assert!(common_name(&r.current()).contains("first-leaf"));
        // a renewal, written to new files and renamed into place
        let (_, c2, k2) = ca_and_leaf("second-leaf");
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(50));
        std::fs::write(dir.path().join("new.crt"), &c2).unwrap();
        std::fs::rename(dir.path().join("new.crt"), &cert).unwrap();
        // only the certificate so far: its key does not match, the old pair stays
        assert!(common_name(&r.current()).contains("first-leaf"));
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(50));
        std::fs::write(dir.path().join("new.key"), &k2).unwrap();
        std::fs::rename(dir.path().join("new.key"), &key).unwrap();
        assert!(common_name(&r.current()).contains("second-leaf"), "the renewed pair is served");
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused_at_start_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (_, c1, _) = ca_and_leaf("a");
        let (_, _, k2) = ca_and_leaf("b");
        std::fs::write(&cert, c1).unwrap();
        std::fs::write(&key, k2).unwrap();
        let e = ReloadingCert::load(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        let e = listener_cert("api.tls_cert_file", &cert, "api.tls_key_file", Path::new("")).unwrap_err().to_string();
        assert!(e.contains("api.tls_cert_file and api.tls_key_file"), "{e}");
        assert!(listener_cert("a", Path::new(""), "b", Path::new("")).unwrap().is_none());
        let e = read_certs(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
