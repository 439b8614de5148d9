//! Connection caps at accept, before any TLS handshake or HTTP parsing.
//!
//! [`CappedTcp`] accepts TCP connections and admits each under [`Connections`] (per node
//! and per client IP address). An admitted connection carries its permit in
//! [`Counted`], which also bounds two ways a client can pin a connection while doing
//! nothing: it must send its first byte within [`FIRST_BYTE_TIMEOUT`], and a reply it
//! does not read fails the connection once a write has made no progress for
//! [`WRITE_STALL_TIMEOUT`]. A refused plain-HTTP connection gets one short HTTP reply
//! (429 or 503, the API's JSON error) and is closed; at most [`REFUSING_AT_ONCE`] such
//! replies are in progress, each bounded by [`REFUSAL_TIME`], and past that (or under TLS)
//! a refused connection is closed at once.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tracing::{debug, warn};

use super::Cap;
use crate::metrics::Metrics;

/// A connection must send its first byte within this long (a TLS client its handshake).
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a client that has made no progress for this long fails the connection:
/// the client is not reading its replies.
pub(crate) const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many refused connections are being answered at once...
pub(crate) const REFUSING_AT_ONCE: usize = 64;
/// ...each for at most this long (reading the request head, writing the reply).
pub(crate) const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// The open client connections of a node, in total and per client IP address.
pub(crate) struct Connections {
    max: usize,
    max_per_address: usize,
    open: AtomicUsize,
    /// The most connections open since memory was last handed back (see [`trim`]).
    peak: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

/// A crowd of at least this many connections that has gone (to half its peak or less)
/// hands its freed memory back to the OS.
const TRIM_AFTER_CROWD: usize = 256;

impl Connections {
    pub(crate) fn new(max: usize, max_per_address: usize, metrics: Arc<Metrics>) -> Self {
        Connections {
            max,
            max_per_address,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Admit a connection from `ip`, or say which cap refuses it (and the cap's value).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, (Cap, usize)> {
        let mut per_address = self.per_address.lock().expect("connections lock");
        let from_ip = per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_address {
            return Err((Cap::ConnectionsPerAddress, self.max_per_address));
        }
        if self.open.load(Ordering::Acquire) >= self.max {
            return Err((Cap::Connections, self.max));
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(open, Ordering::AcqRel);
        per_address.insert(ip, from_ip + 1);
        self.metrics.client_connections.inc();
        Ok(Permit {
            connections: self.clone(),
            ip,
        })
    }

    fn shed(&self, cap: Cap) {
        self.metrics.shed.with_label_values(&[cap.label()]).inc();
    }
}

/// An admitted connection's place, until dropped.
pub(crate) struct Permit {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.connections;
        let mut per_address = c.per_address.lock().expect("connections lock");
        if let Some(n) = per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&self.ip);
            }
        }
        let open = c.open.fetch_sub(1, Ordering::AcqRel) - 1;
        c.metrics.client_connections.dec();
        let peak = c.peak.load(Ordering::Acquire);
        if peak >= TRIM_AFTER_CROWD + open
            && open * 2 <= peak
            && c.peak
                .compare_exchange(peak, open, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            trim();
        }
    }
}

/// Hand the memory a crowd of connections freed back to the OS: glibc's allocator keeps
/// freed memory that is not at the top of its heap (per-thread arenas included), so
/// without this RSS stays at the crowd's peak after it left. Off the runtime's workers.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(|| {
            // SAFETY: malloc_trim only touches the allocator's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    }
}

/// A TCP listener that admits connections under [`Connections`] (or all of them, for the
/// peer listener, which is never capped).
pub(crate) struct CappedTcp {
    inner: TcpListener,
    caps: Option<Arc<Connections>>,
    /// Answer a refused connection with an HTTP reply (plain HTTP), or close it (TLS).
    answer: bool,
    refusing: Arc<Semaphore>,
}

impl CappedTcp {
    pub(crate) fn new(inner: TcpListener, caps: Option<Arc<Connections>>, answer: bool) -> Self {
        CappedTcp {
            inner,
            caps,
            answer,
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next admitted connection; refused ones are answered or closed on the way.
    pub(crate) async fn accept(&mut self) -> (Counted<TcpStream>, SocketAddr) {
        loop {
            let (tcp, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let permit = match &self.caps {
                None => None,
                Some(caps) => match caps.admit(addr.ip()) {
                    Ok(permit) => Some(permit),
                    Err((cap, value)) => {
                        caps.shed(cap);
                        self.refuse(tcp, addr, cap, value);
                        continue;
                    }
                },
            };
            let bounded = self.caps.is_some();
            return (Counted::new(tcp, permit, bounded), addr);
        }
    }

    /// Answer a refused connection (bounded in number and time) or close it.
    fn refuse(&self, tcp: TcpStream, addr: SocketAddr, cap: Cap, value: usize) {
        debug!(peer = %addr, cap = cap.label(), "connection refused");
        if !self.answer {
            return;
        }
        let Ok(slot) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(REFUSAL_TIME, answer(tcp, cap.error(value))).await;
        });
    }
}

/// Read the request head (so that closing does not reset the connection under the
/// client's request), write `error` as a complete HTTP/1.1 reply, and close. A liveness
/// probe (`GET /healthz`) is answered 200 instead: the node is alive, only full, and a
/// supervisor that restarted it for being busy would turn overload into an outage.
async fn answer(mut tcp: TcpStream, error: leasehold_api::error::ApiError) {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = if is_liveness_probe(&head) {
        let body = r#"{"status":"ok"}"#;
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        let body = error.to_json();
        let status = error.status();
        let reason = if status == 429 {
            "Too Many Requests"
        } else {
            "Service Unavailable"
        };
        let retry = error.retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1);
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nretry-after: {retry}\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    if tcp.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    // Read what else the client sends until it closes (or the time runs out), so the
    // close is not a reset that could destroy the reply.
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// The request line is `GET /healthz` (with or without a query).
fn is_liveness_probe(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    line.starts_with(b"GET /healthz ") || line.starts_with(b"GET /healthz?")
}

/// A client connection with its [`Permit`], and the first-byte and write-stall bounds.
pub(crate) struct Counted<T> {
    io: T,
    _permit: Option<Permit>,
    /// Until the first byte arrives: the deadline for it.
    first_byte: Option<Pin<Box<Sleep>>>,
    /// While a write makes no progress: when it fails.
    stalled: Option<Pin<Box<Sleep>>>,
    bounded: bool,
}

impl<T> Counted<T> {
    /// A client connection (`bounded`) gets the first-byte and write-stall bounds; a peer
    /// connection neither.
    fn new(io: T, permit: Option<Permit>, bounded: bool) -> Self {
        Counted {
            io,
            _permit: permit,
            first_byte: bounded.then(|| Box::pin(tokio::time::sleep(FIRST_BYTE_TIMEOUT))),
            stalled: None,
            bounded,
        }
    }

    /// A pending write: fail once it has made no progress for [`WRITE_STALL_TIMEOUT`].
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read its reply",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(
        &mut self,
        ready: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match ready {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending if !self.bounded => Poll::Pending,
            Poll::Pending => match self.stall(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = this.first_byte.as_mut() {
            match polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_byte = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(polled, cx)
    }
}

impl axum::serve::Listener for CappedTcp {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        CappedTcp::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        CappedTcp::local_addr(self)
    }
}
