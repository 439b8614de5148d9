//! [`PeerClient`]: one pooled HTTP client for every outgoing peer call.
//!
//! Every call is `POST http://{peer}/peer/v1` (`https://` with `[tls]`) with an enveloped
//! [`PeerRequest`]; the reply is an enveloped [`PeerReply`]. reqwest keeps connections per
//! peer. When a cluster secret is set, every call carries it in [`SECRET_HEADER`]. With
//! TLS, the client trusts only `tls.ca` and presents the node's certificate (mutual TLS);
//! [`PeerClient::set_tls`] swaps in reloaded material for new connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tracing::Instrument;

use super::envelope::{self, EnvelopeError, PeerReply, PeerRequest};
use super::faults::Faults;
use super::stream::{PeerStream, STREAM_PATH, UPGRADE_TOKEN};

/// The one route of the peer listener.
pub(crate) const PEER_PATH: &str = "/peer/v1";
/// The header carrying the cluster secret.
pub(crate) const SECRET_HEADER: &str = "x-leasehold-secret";

#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerCallError {
    #[error("link to {0} is cut (fault injection)")]
    Cut(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: reqwest::Error,
    },
    #[error("request to {addr} timed out")]
    Timeout { addr: String },
    #[error("request to {addr} failed: {source}")]
    Http {
        addr: String,
        source: reqwest::Error,
    },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("peer message to or from {addr}: {source}")]
    Envelope { addr: String, source: EnvelopeError },
    #[error("{addr} answered a {got} request with another kind of reply")]
    Mismatch { addr: String, got: &'static str },
    #[error("the stream to {addr} is closed")]
    Closed { addr: String },
    #[error("the stream to {addr} broke with the request in flight: {why}")]
    Broken { addr: String, why: String },
}

impl PeerCallError {
    /// True if the request certainly did not reach the peer.
    pub(crate) fn not_sent(&self) -> bool {
        matches!(
            self,
            PeerCallError::Cut(_) | PeerCallError::Connect { .. } | PeerCallError::Closed { .. }
        )
    }

    /// True if what answered is not a leasehold peer this node can talk to: a wrong
    /// address (another server answered 4xx), a wrong cluster secret or certificate, or
    /// a peer protocol this node does not speak. Retrying at once cannot help.
    pub(crate) fn not_a_peer(&self) -> bool {
        match self {
            PeerCallError::Status { status, .. } => (400..500).contains(status),
            PeerCallError::Envelope { .. } | PeerCallError::Mismatch { .. } => true,
            _ => false,
        }
    }
}

/// One pooled HTTP client for all peer calls, with the secret and the fault switch.
#[derive(Clone)]
pub(crate) struct PeerClient {
    /// Swapped whole when TLS material is reloaded (a clone per call is an `Arc` bump).
    client: Arc<RwLock<reqwest::Client>>,
    scheme: &'static str,
    proxy: Option<SocketAddr>,
    secret: Option<Arc<String>>,
    faults: Arc<Faults>,
    /// The stream to each peer address, opened on first use and reopened once closed.
    streams: Arc<Mutex<HashMap<String, StreamSlot>>>,
    streams_opened: Arc<AtomicU64>,
    frame_bytes: usize,
}

/// One peer's stream; the async lock lets one caller open it while the others wait.
type StreamSlot = Arc<tokio::sync::Mutex<Option<Arc<PeerStream>>>>;

/// The default of `cluster.peer_frame_bytes`.
pub(crate) const DEFAULT_FRAME_BYTES: usize = 64 * 1024;
/// How long opening a stream (connect, TLS, upgrade) may take.
const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(2);

impl PeerClient {
    /// `proxy`: send every peer request through this HTTP forward proxy (tunnelled with
    /// CONNECT under TLS); without one, connect directly (and ignore `HTTP_PROXY` and
    /// friends from the environment). `tls`: speak https with this config.
    pub(crate) fn new(
        secret: Option<Arc<String>>,
        faults: Arc<Faults>,
        proxy: Option<SocketAddr>,
        tls: Option<rustls::ClientConfig>,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        PeerClient {
            client: Arc::new(RwLock::new(build(proxy, tls))),
            scheme,
            proxy,
            secret,
            faults,
            streams: Arc::default(),
            streams_opened: Arc::default(),
            frame_bytes: DEFAULT_FRAME_BYTES,
        }
    }

    /// Cut messages on peer streams into frames of at most `frame_bytes`.
    pub(crate) fn with_frame_bytes(mut self, frame_bytes: usize) -> Self {
        self.frame_bytes = frame_bytes;
        self
    }

    pub(crate) fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// How many peer streams this client opened.
    pub(crate) fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::Relaxed)
    }

    /// New connections present and trust this (reloaded) material; pooled ones finish.
    pub(crate) fn set_tls(&self, tls: rustls::ClientConfig) {
        let client = build(self.proxy, Some(tls));
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        // Streams live as long as their peers do: close them, so that the next ones are
        // opened (and authenticated) with the new material.
        self.close_streams("TLS material reloaded");
    }

    /// Close every open stream (its calls fail, its sessions end); the next use of a
    /// peer opens a new one.
    pub(crate) fn close_streams(&self, why: &str) {
        let slots: Vec<StreamSlot> = self.slots().values().cloned().collect();
        for slot in slots {
            if let Ok(slot) = slot.try_lock() {
                if let Some(stream) = slot.as_ref() {
                    stream.close(why.to_string(), false);
                }
            }
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamSlot>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open stream to `peer_addr`, opened now if there is none.
    pub(crate) async fn stream(&self, peer_addr: &str) -> Result<Arc<PeerStream>, PeerCallError> {
        if self.faults.is_blocked(peer_addr) {
            return Err(PeerCallError::Cut(peer_addr.to_string()));
        }
        let slot = self
            .slots()
            .entry(peer_addr.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(stream) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(stream.clone());
        }
        let open = self.open_stream(peer_addr);
        let stream = match tokio::time::timeout(STREAM_OPEN_TIMEOUT, open).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(PeerCallError::Timeout {
                    addr: peer_addr.to_string(),
                })
            }
        };
        *slot = Some(stream.clone());
        Ok(stream)
    }

    async fn open_stream(&self, peer_addr: &str) -> Result<Arc<PeerStream>, PeerCallError> {
        let addr = || peer_addr.to_string();
        let mut http = self
            .http()
            .get(format!("{}://{peer_addr}{STREAM_PATH}", self.scheme))
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, UPGRADE_TOKEN);
        if let Some(secret) = &self.secret {
            http = http.header(SECRET_HEADER, secret.as_str());
        }
        let response = http.send().await.map_err(|e| classify(addr(), e))?;
        let status = response.status();
        if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(PeerCallError::Status {
                addr: addr(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let io = response.upgrade().await.map_err(|e| classify(addr(), e))?;
        tracing::debug!(peer = %peer_addr, "peer stream opened");
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        Ok(PeerStream::start(
            peer_addr,
            io,
            self.frame_bytes,
            self.faults.clone(),
        ))
    }

    fn http(&self) -> reqwest::Client {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Send `request` to the peer at `peer_addr` and decode its reply.
    pub(crate) async fn call(
        &self,
        peer_addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, PeerCallError> {
        let span = tracing::debug_span!("peer_call", peer = %peer_addr, rpc = request.kind());
        self.call_inner(peer_addr, request, timeout)
            .instrument(span)
            .await
    }

    async fn call_inner(
        &self,
        peer_addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, PeerCallError> {
        if self.faults.is_blocked(peer_addr) {
            return Err(PeerCallError::Cut(peer_addr.to_string()));
        }
        let addr = || peer_addr.to_string();
        let envelope_err = |source| PeerCallError::Envelope {
            addr: addr(),
            source,
        };
        let body = envelope::encode(request).map_err(envelope_err)?;
        let mut http = self
            .http()
            .post(format!("{}://{peer_addr}{PEER_PATH}", self.scheme))
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(secret) = &self.secret {
            http = http.header(SECRET_HEADER, secret.as_str());
        }
        let response = http.send().await.map_err(|e| classify(addr(), e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify(addr(), e))?;
        if !status.is_success() {
            return Err(PeerCallError::Status {
                addr: addr(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        envelope::decode(&bytes).map_err(envelope_err)
    }
}

fn build(proxy: Option<SocketAddr>, tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(500));
    let builder = match proxy.and_then(|p| reqwest::Proxy::all(format!("http://{p}")).ok()) {
        Some(proxy) => builder.proxy(proxy),
        None => builder.no_proxy(),
    };
    let builder = match tls {
        Some(tls) => builder.use_preconfigured_tls(tls),
        None => builder,
    };
    // Building a client with these options does not fail (the TLS config is rustls's,
    // the backend reqwest is built with).
    builder.build().expect("reqwest client builds")
}

fn classify(addr: String, e: reqwest::Error) -> PeerCallError {
    if e.is_connect() {
        PeerCallError::Connect { addr, source: e }
    } else if e.is_timeout() {
        PeerCallError::Timeout { addr }
    } else {
        PeerCallError::Http { addr, source: e }
    }
}
