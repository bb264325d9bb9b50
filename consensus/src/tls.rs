//! TLS for every listener and every peer client, with etcd's semantics:
//! `--cert-file`/`--key-file` is the server's identity, `--trusted-ca-file`
//! the CA that signs clients, `--client-cert-auth` makes a client
//! certificate mandatory (the peer side has the same four with `peer-`).
//!
//! ```text
//!  TcpListener ──accept──> handshake task (bounded) ──ok──> mpsc ──> tonic server
//!                                   └─ refused: one warn line with the peer
//!                                      address and rustls' reason, then closed
//!  ReloadingTls: poll mtimes every `reload_interval` ──changed──> rebuild the
//!                rustls config ──ok──> swap (new connections use it)
//!                                └─bad──> keep the old one, warn why
//! ```
//!
//! A slow or silent client never delays another one's handshake (each runs
//! in its own task, with a deadline), and a bad certificate written to disk
//! never takes a working listener down. Only the ring provider is used: no
//! OpenSSL, no process-wide default provider.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval at which certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("bad certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("bad trusted CA file: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0} needs {1}")]
    Missing(&'static str, &'static str),
}

/// One side's certificate files, as etcd's flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file` / `--peer-cert-file`: PEM chain, leaf first.
    pub cert: PathBuf,
    /// `--key-file` / `--peer-key-file`: PEM private key.
    pub key: PathBuf,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: PEM CA(s) that sign
    /// clients (and, for peers, the other members' servers).
    pub trusted_ca: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: refuse clients
    /// without a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            trusted_ca: None,
            client_cert_auth: false,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }

    /// From etcd-style optional flags: `None` when no cert/key is given.
    ///
    /// # Errors
    /// [`TlsError::Missing`] when only one of cert and key is given, or
    /// client-cert-auth is asked for without a trusted CA.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        trusted_ca: Option<&Path>,
        client_cert_auth: bool,
        names: [&'static str; 4],
    ) -> Result<Option<Self>, TlsError> {
        let [cert_flag, key_flag, ca_flag, auth_flag] = names;
        match (cert, key) {
            (None, None) => {
                if client_cert_auth {
                    return Err(TlsError::Missing(auth_flag, cert_flag));
                }
                Ok(None)
            }
            (Some(_), None) => Err(TlsError::Missing(cert_flag, key_flag)),
            (None, Some(_)) => Err(TlsError::Missing(key_flag, cert_flag)),
            (Some(c), Some(k)) => {
                if client_cert_auth && trusted_ca.is_none() {
                    return Err(TlsError::Missing(auth_flag, ca_flag));
                }
                Ok(Some(Self {
                    trusted_ca: trusted_ca.map(Path::to_path_buf),
                    client_cert_auth,
                    ..Self::new(c, k)
                }))
            }
        }
    }

    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.trusted_ca.as_deref());
        v
    }

    /// A rustls server configuration from the files as they are now.
    ///
    /// # Errors
    /// Unreadable or invalid PEM, a key that does not match, a bad CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.trusted_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca)? {
                    roots.add(c)?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                // etcd without --client-cert-auth ignores client
                // certificates; we still verify one that is offered, so
                // the gateway's authorization can trust its CN.
                let v = if self.client_cert_auth {
                    v.build()?
                } else {
                    v.allow_unauthenticated().build()?
                };
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_single_cert(certs, key)?;
        // gRPC clients insist on h2; curl and HTTP/1.1 clients share the port.
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// Unreadable file or no certificate in it.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// === server side: a reloading acceptor ===

/// A server TLS configuration that follows its files on disk.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
    /// Last seen modification times (cert, key, CA); a std Mutex, held
    /// only by the poller to compare and store, never across an await.
    seen: parking_lot::Mutex<Vec<Option<SystemTime>>>,
    /// What the listener is called in log lines ("client", "peer").
    label: &'static str,
}

impl ReloadingTls {
    /// Loads the files now and, inside a tokio runtime, starts polling
    /// them every `files.reload_interval` (the poller stops when the last
    /// handle is dropped).
    ///
    /// # Errors
    /// The files do not make a valid configuration now.
    pub fn new(files: TlsFiles, label: &'static str) -> Result<Arc<Self>, TlsError> {
        let seen = files.mtimes();
        let cfg = files.server_config()?;
        let this = Arc::new(Self {
            files,
            current: ArcSwap::from_pointee(cfg),
            seen: parking_lot::Mutex::new(seen),
            label,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(poll_files(Arc::downgrade(&this)));
        }
        Ok(this)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Rebuilds the configuration if a file changed since the last look.
    /// Returns whether a new configuration is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = self.files.mtimes();
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match self.files.server_config() {
            Ok(cfg) => {
                self.current.store(Arc::new(cfg));
                tracing::info!(listener = self.label, cert = %self.files.cert.display(), "reloaded TLS certificate");
                true
            }
            Err(e) => {
                tracing::warn!(listener = self.label, error = %e, "new TLS files are not usable; keeping the previous certificate");
                false
            }
        }
    }

    /// Accepts on `listener`, handshakes each connection in its own task
    /// (bounded by [`HANDSHAKE_TIMEOUT`]) and yields the established
    /// streams. Refused handshakes are logged with the peer and the reason.
    /// Accepting stops when the returned stream is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        let accepted = futures::stream::unfold(listener, |listener| async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        return Some(((tcp, peer), listener));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep
                        // serving the connections we have, retry shortly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        self.handshakes(accepted, HANDSHAKE_TIMEOUT)
    }

    /// Handshakes each connection `accepted` yields in its own task, each
    /// bounded by `timeout`, and yields the established streams (in the
    /// order they finish). A connection that fails or runs out of time is
    /// logged and closed. Stops taking connections when the returned
    /// stream is dropped.
    pub fn handshakes<S, IO>(
        self: &Arc<Self>,
        accepted: S,
        timeout: Duration,
    ) -> impl Stream<Item = std::io::Result<TlsStream<IO>>> + Send + 'static
    where
        S: Stream<Item = (IO, std::net::SocketAddr)> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            let mut accepted = std::pin::pin!(accepted);
            loop {
                let (io, peer) = tokio::select! {
                    a = accepted.next() => match a {
                        Some(a) => a,
                        None => return,
                    },
                    () = tx.closed() => return,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                let label = tls.label;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send(Ok(s)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(listener = label, %peer, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            tracing::warn!(listener = label, %peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

async fn poll_files(tls: Weak<ReloadingTls>) {
    let interval = match tls.upgrade() {
        Some(t) => t.files.reload_interval,
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(t) = tls.upgrade() else { return };
        // File reads are small; a blocking section keeps the runtime honest.
        let _ = tokio::task::spawn_blocking(move || t.reload_if_changed()).await;
    }
}

// === client side ===

/// A tonic client TLS configuration from PEM files read now (so a
/// reconnect after a rotation picks up the new files): `ca` verifies the
/// server, `identity` is this side's certificate and key.
///
/// # Errors
/// An unreadable file.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> std::io::Result<tonic::transport::ClientTlsConfig> {
    let mut c = tonic::transport::ClientTlsConfig::new().assume_http2(true);
    if let Some(ca) = ca {
        c = c.ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(ca)?));
    }
    if let Some((cert, key)) = identity {
        c = c.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ));
    }
    Ok(c)
}

/// The subject common name of a DER certificate (the identity etcd takes
/// from a client certificate), read with a minimal DER walk.
pub fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?,
    // serial, signature, issuer, validity, subject, ... }, ... }
    let (_, cert_body, _) = der_tlv(cert)?;
    let (_, mut tbs, _) = der_tlv(cert_body)?;
    let mut fields = Vec::with_capacity(6);
    while !tbs.is_empty() && fields.len() < 6 {
        let (tag, body, rest) = der_tlv(tbs)?;
        if !(fields.is_empty() && tag == 0xa0) {
            fields.push(body);
        }
        tbs = rest;
    }
    // serial, signature, issuer, validity, subject
    let mut subject = *fields.get(4)?;
    let mut cn = None;
    while !subject.is_empty() {
        let (_, set, rest) = der_tlv(subject)?;
        subject = rest;
        let (_, atv, _) = der_tlv(set)?;
        let (oid_tag, oid, value) = der_tlv(atv)?;
        if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
            let (_, v, _) = der_tlv(value)?;
            cn = Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    cn
}

/// One DER tag-length-value: (tag, value, rest).
pub(crate) fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    Some((tag, b.get(hdr..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_need_both_halves() {
        let names = [
            "--cert-file",
            "--key-file",
            "--trusted-ca-file",
            "--client-cert-auth",
        ];
        assert!(
            TlsFiles::from_flags(None, None, None, false, names)
                .unwrap()
                .is_none()
        );
        assert!(TlsFiles::from_flags(Some(Path::new("c")), None, None, false, names).is_err());
        assert!(TlsFiles::from_flags(None, None, None, true, names).is_err());
        assert!(
            TlsFiles::from_flags(
                Some(Path::new("c")),
                Some(Path::new("k")),
                None,
                true,
                names
            )
            .is_err()
        );
        let f = TlsFiles::from_flags(
            Some(Path::new("c")),
            Some(Path::new("k")),
            Some(Path::new("ca")),
            true,
            names,
        )
        .unwrap()
        .unwrap();
        assert!(f.client_cert_auth);
    }

    #[test]
    fn common_name_of_a_generated_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = lookout_testkit::certs::TestCa::new(dir.path(), "t");
        let alice = ca.issue_client("alice");
        let certs = read_certs(&alice.cert).unwrap();
        assert_eq!(common_name(&certs[0]).as_deref(), Some("alice"));
        let ca_cert = read_certs(&ca.ca_file).unwrap();
        assert_eq!(common_name(&ca_cert[0]).as_deref(), Some("t test CA"));
        // A server config builds from these files, and refuses a bad key.
        let server = ca.issue_server("srv");
        let mut files = TlsFiles::new(&server.cert, &server.key);
        files.trusted_ca = Some(ca.ca_file.clone());
        files.client_cert_auth = true;
        assert!(files.server_config().is_ok());
        std::fs::write(&server.key, "junk").unwrap();
        assert!(files.server_config().is_err());
    }

    #[test]
    fn der_walk_rejects_truncation() {
        assert_eq!(der_tlv(&[0x30, 0x03, 1, 2]), None);
        assert_eq!(
            der_tlv(&[0x30, 0x02, 1, 2, 9]),
            Some((0x30, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(common_name(&[0x30, 0x00]), None);
    }
}
