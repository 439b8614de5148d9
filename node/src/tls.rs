//! TLS for both listeners and for the peer client (rustls, `[tls]` in the config).
//!
//! - [`Tls::load`] reads `tls.cert`, `tls.key`, `tls.ca` and `tls.client_ca` and checks
//!   them before the node serves anything: a missing file, a file without PEM, a key that
//!   is not the certificate's, a certificate that has expired, is not valid yet, or is not
//!   signed by `tls.ca` (or cannot serve as a peer's client certificate) is a
//!   [`TlsError`] naming the key, the file and the rule.
//! - The client listener serves `tls.cert`; with `tls.client_ca` it requires a client
//!   certificate signed by it. The peer listener requires a client certificate signed by
//!   `tls.ca` (mutual TLS), so a process without one gets no peer RPC answered: its
//!   handshake fails before any HTTP is read.
//! - The peer client trusts only `tls.ca` and presents `tls.cert` as its client certificate.
//! - [`TlsListener`] is an axum listener that runs every handshake in its own task
//!   (bounded by [`HANDSHAKE_TIMEOUT`]), so one slow or silent client holds up no other;
//!   connections are admitted under the connection caps before the handshake
//!   (`overload::listener::CappedTcp`).
//! - [`Tls::reload`] re-reads the files (SIGHUP): new connections use the new material, a
//!   bad file keeps the old one.
//! - [`generate_local_certs`] makes a CA and node certificates for `local-cluster --tls`
//!   and the tests.
//!
//! Every config is built with the ring provider explicitly: more than one rustls provider
//! may be linked into a binary, and the process default is then ambiguous.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use leasehold_config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::overload::listener::{CappedTcp, Counted};

/// The longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A problem with the TLS files, naming the key, the file and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key} ({path}): {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The material in force: what each listener serves and what the peer client presents.
pub(crate) struct Material {
    pub(crate) client_listener: Arc<ServerConfig>,
    pub(crate) peer_listener: Arc<ServerConfig>,
    pub(crate) peer_client: ClientConfig,
}

/// A node's TLS: the files it was configured with and the material read from them.
pub(crate) struct Tls {
    files: TlsConfig,
    current: RwLock<Arc<Material>>,
}

impl Tls {
    /// Read and check the files of `[tls]` (which validation guarantees are all set).
    pub(crate) fn load(files: &TlsConfig) -> Result<Tls, TlsError> {
        let material = read_material(files)?;
        Ok(Tls {
            files: files.clone(),
            current: RwLock::new(Arc::new(material)),
        })
    }

    pub(crate) fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-read the files; on success new connections use them, on error nothing changes.
    pub(crate) fn reload(&self) -> Result<Arc<Material>, TlsError> {
        let material = Arc::new(read_material(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = material.clone();
        Ok(material)
    }
}

fn path_of<'a>(key: &'static str, path: &'a Option<PathBuf>) -> Result<&'a Path, TlsError> {
    path.as_deref().ok_or_else(|| TlsError {
        key,
        path: String::new(),
        message: "must be set".into(),
    })
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key,
        path: path.display().to_string(),
        message: format!("cannot read the file: {e}"),
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(key, path)?;
    let err = |message: String| TlsError {
        key,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file("tls.key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError {
        key: "tls.key",
        path: path.display().to_string(),
        message: format!(
            "holds no PEM private key (a \"-----BEGIN PRIVATE KEY-----\" block, PKCS#8, PKCS#1 or SEC1): {e}"
        ),
    })
}

fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(key, path)? {
        roots.add(cert).map_err(|e| TlsError {
            key,
            path: path.display().to_string(),
            message: format!("is not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn read_material(files: &TlsConfig) -> Result<Material, TlsError> {
    let provider = provider();
    let cert_path = path_of("tls.cert", &files.cert)?;
    let key_path = path_of("tls.key", &files.key)?;
    let ca_path = path_of("tls.ca", &files.ca)?;
    let chain = read_certs("tls.cert", cert_path)?;
    let key = read_key(key_path)?;
    let ca = Arc::new(roots("tls.ca", ca_path)?);
    let cert_err = |message: String| TlsError {
        key: "tls.cert",
        path: cert_path.display().to_string(),
        message,
    };

    // The key must be the certificate's.
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError {
                key: "tls.key",
                path: key_path.display().to_string(),
                message: format!(
                    "is not the private key of the certificate in tls.cert ({})",
                    cert_path.display()
                ),
            },
            e => TlsError {
                key: "tls.key",
                path: key_path.display().to_string(),
                message: format!("cannot be used: {e}"),
            },
        })?;
    drop(certified);

    // The certificate must be valid now and signed by the CA the peers trust, for both
    // of its uses: serving (both listeners) and as the client certificate to peers.
    let parsed = rustls::server::ParsedCertificate::try_from(&chain[0])
        .map_err(|e| cert_err(format!("cannot be parsed: {e}")))?;
    let now = UnixTime::now();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &ca,
        &chain[1..],
        now,
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| cert_err(describe_cert_error(&e, ca_path)))?;
    let peer_verifier = WebPkiClientVerifier::builder_with_provider(ca.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError {
            key: "tls.ca",
            path: ca_path.display().to_string(),
            message: format!("cannot verify peers: {e}"),
        })?;
    peer_verifier
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map_err(|e| {
            cert_err(format!(
                "cannot serve as this node's client certificate to its peers (mutual TLS): {}; \
                 it needs the clientAuth extended key usage as well as serverAuth",
                describe_cert_error(&e, ca_path)
            ))
        })?;

    let server =
        |verifier: Option<Arc<dyn ClientCertVerifier>>| -> Result<Arc<ServerConfig>, TlsError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| cert_err(e.to_string()))?;
            let builder = match verifier {
                Some(v) => builder.with_client_cert_verifier(v),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| cert_err(format!("cannot be served: {e}")))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        };
    let client_verifier = match &files.client_ca {
        Some(path) => {
            let roots = Arc::new(roots("tls.client_ca", path)?);
            Some(
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError {
                        key: "tls.client_ca",
                        path: path.display().to_string(),
                        message: format!("cannot verify clients: {e}"),
                    })?,
            )
        }
        None => None,
    };
    let client_listener = server(client_verifier)?;
    let peer_listener = server(Some(peer_verifier))?;
    let peer_client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(e.to_string()))?
        .with_root_certificates(ca)
        .with_client_auth_cert(chain, key)
        .map_err(|e| cert_err(format!("cannot be presented to peers: {e}")))?;
    Ok(Material {
        client_listener,
        peer_listener,
        peer_client,
    })
}

fn describe_cert_error(e: &rustls::Error, ca: &Path) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "has expired; renew it".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "is not valid yet (check this machine's clock)".to_string()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "is not signed by the CA in tls.ca ({}); peers would refuse it",
            ca.display()
        ),
        e => e.to_string(),
    }
}

/// An axum listener speaking TLS with the material of a [`Tls`] (re-read per connection,
/// so a reload reaches new connections).
pub(crate) struct TlsListener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<Counted<TcpStream>>, SocketAddr)>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// `config` picks the server config of this listener out of the material in force.
    pub(crate) fn new(
        listener: CappedTcp,
        tls: Arc<Tls>,
        config: fn(&Material) -> Arc<ServerConfig>,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, accepted) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, tls, config, tx));
        Ok(TlsListener {
            local_addr,
            accepted,
            accept_loop,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    mut listener: CappedTcp,
    tls: Arc<Tls>,
    config: fn(&Material) -> Arc<ServerConfig>,
    tx: mpsc::Sender<(TlsStream<Counted<TcpStream>>, SocketAddr)>,
) {
    loop {
        // Admitted under the connection caps (client listener) before any handshake.
        let (tcp, addr) = listener.accept().await;
        let acceptor = TlsAcceptor::from(config(&tls.current()));
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, addr)).await;
                }
                Ok(Err(e)) => debug!(peer = %addr, error = %e, "TLS handshake failed"),
                Err(_) => debug!(peer = %addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Counted<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// What [`generate_local_certs`] wrote.
#[derive(Debug, Clone)]
pub struct LocalCerts {
    /// The CA certificate: `tls.ca` of every node, `--cacert` of every client.
    pub ca: PathBuf,
    /// The CA's private key (kept so more node certificates can be made).
    pub ca_key: PathBuf,
    /// Certificate and key of node N at index N - 1.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

/// Make a CA and `nodes` node certificates signed by it under `dir`: `ca.crt`, `ca.key`,
/// `node-N.crt`, `node-N.key`. Node certificates name `localhost`, `127.0.0.1` and `::1`
/// and serve both as server and as client certificates (mutual TLS between peers). For
/// trying leasehold on one machine and for tests, not for production.
pub fn generate_local_certs(dir: &Path, nodes: u64) -> Result<LocalCerts, String> {
    let ca = CertAuthority::new("leasehold local CA")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_path = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    write_private(&ca_path, ca.cert_pem().as_bytes())?;
    write_private(&ca_key, ca.key_pem().as_bytes())?;
    let mut out = Vec::new();
    for n in 1..=nodes {
        let (cert, key) = ca.issue(&format!("leasehold node {n}"), None)?;
        let cert_path = dir.join(format!("node-{n}.crt"));
        let key_path = dir.join(format!("node-{n}.key"));
        write_private(&cert_path, cert.as_bytes())?;
        write_private(&key_path, key.as_bytes())?;
        out.push((cert_path, key_path));
    }
    Ok(LocalCerts {
        ca: ca_path,
        ca_key,
        nodes: out,
    })
}

/// A CA made in memory, to issue node (and client) certificates (local clusters, tests).
pub struct CertAuthority {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl CertAuthority {
    pub fn new(name: &str) -> Result<Self, String> {
        let err = |e: rcgen::Error| format!("cannot make a CA: {e}");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(CertAuthority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate (PEM) and its key (PEM) for `localhost`, `127.0.0.1` and `::1`, for
    /// server and client use. `validity`: (not before, not after) as Unix seconds, to
    /// make expired certificates in tests; `None` is a year from now.
    pub fn issue(
        &self,
        name: &str,
        validity: Option<(i64, i64)>,
    ) -> Result<(String, String), String> {
        let err = |e: rcgen::Error| format!("cannot make a certificate for {name}: {e}");
        let sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        let mut params = rcgen::CertificateParams::new(sans).map_err(err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        let now = time_now();
        let (from, to) = validity.unwrap_or((now - 3600, now + 365 * 24 * 3600));
        params.not_before =
            rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(from.max(0) as u64);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(to.max(0) as u64);
        let key = rcgen::KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Write a file only its owner can read (keys; certificates do no harm either way).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
        config: TlsConfig,
    }

    fn files(ca: &CertAuthority, validity: Option<(i64, i64)>) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue("node", validity).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let config = TlsConfig {
            cert: Some(write("node.crt", &cert)),
            key: Some(write("node.key", &key)),
            ca: Some(write("ca.crt", &ca.cert_pem())),
            client_ca: None,
        };
        Files { dir, config }
    }

    fn load_err(config: &TlsConfig) -> TlsError {
        match Tls::load(config) {
            Ok(_) => panic!("{config:?} loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn good_files_load() {
        let ca = CertAuthority::new("ca").unwrap();
        let f = files(&ca, None);
        Tls::load(&f.config).expect("loads");
    }

    #[test]
    fn every_bad_file_is_named_with_what_is_wrong() {
        let ca = CertAuthority::new("ca").unwrap();
        let f = files(&ca, None);
        let dir = f.dir.path();

        let mut c = f.config.clone();
        c.cert = Some(dir.join("missing.crt"));
        let e = load_err(&c);
        assert_eq!(e.key, "tls.cert");
        assert!(e.message.contains("cannot read the file"), "{e}");

        std::fs::write(dir.join("garbage.pem"), "hello, not pem").unwrap();
        let mut c = f.config.clone();
        c.cert = Some(dir.join("garbage.pem"));
        let e = load_err(&c);
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let mut c = f.config.clone();
        c.key = Some(dir.join("garbage.pem"));
        let e = load_err(&c);
        assert_eq!(e.key, "tls.key");
        assert!(e.message.contains("holds no PEM private key"), "{e}");

        // Another certificate's key.
        let (_, other_key) = ca.issue("other", None).unwrap();
        std::fs::write(dir.join("other.key"), other_key).unwrap();
        let mut c = f.config.clone();
        c.key = Some(dir.join("other.key"));
        let e = load_err(&c);
        assert_eq!(e.key, "tls.key");
        assert!(
            e.message
                .contains("is not the private key of the certificate"),
            "{e}"
        );

        // Signed by another CA than tls.ca.
        let stranger = CertAuthority::new("stranger").unwrap();
        std::fs::write(dir.join("stranger.crt"), stranger.cert_pem()).unwrap();
        let mut c = f.config.clone();
        c.ca = Some(dir.join("stranger.crt"));
        let e = load_err(&c);
        assert_eq!(e.key, "tls.cert");
        assert!(
            e.message.contains("is not signed by the CA in tls.ca"),
            "{e}"
        );

        // Expired, and not valid yet.
        let now = time_now();
        let old = files(&ca, Some((now - 7200, now - 3600)));
        let e = load_err(&old.config);
        assert!(e.message.contains("has expired"), "{e}");
        let future = files(&ca, Some((now + 3600, now + 7200)));
        let e = load_err(&future.config);
        assert!(e.message.contains("is not valid yet"), "{e}");
    }

    #[test]
    fn a_bad_reload_keeps_the_material_in_force() {
        let ca = CertAuthority::new("ca").unwrap();
        let f = files(&ca, None);
        let tls = Tls::load(&f.config).unwrap();
        let before = tls.current();
        std::fs::write(f.config.cert.as_ref().unwrap(), "broken").unwrap();
        assert!(tls.reload().is_err());
        assert!(
            Arc::ptr_eq(&before, &tls.current()),
            "the old material stays"
        );
        let (cert, key) = ca.issue("renewed", None).unwrap();
        std::fs::write(f.config.cert.as_ref().unwrap(), cert).unwrap();
        std::fs::write(f.config.key.as_ref().unwrap(), key).unwrap();
        tls.reload().expect("renewed files load");
        assert!(!Arc::ptr_eq(&before, &tls.current()));
    }
}
