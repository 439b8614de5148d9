//! [`LinkProxy`]: the forward proxy of one node's peer traffic, with a switch per target
//! that cuts the link (plain requests hang, tunnels are refused and closed).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// An HTTP forward proxy for one node's outgoing peer traffic, with a switch per target:
/// plain `http://` requests in absolute form are forwarded one by one, and `CONNECT`
/// tunnels (what a client sends for `https://` through a proxy) carry bytes both ways,
/// as do plain requests that upgrade the connection (the nodes' peer streams).
pub struct LinkProxy {
    pub addr: SocketAddr,
    blocked: Arc<RwLock<HashSet<String>>>,
    /// Bumped by every [`block`](Self::block): each open tunnel then checks whether its
    /// target is cut. Dropping it (with the proxy) closes every tunnel.
    cuts: watch::Sender<u64>,
    server: JoinHandle<()>,
    acceptor: JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    blocked: Arc<RwLock<HashSet<String>>>,
    http: reqwest::Client,
    cuts: watch::Receiver<u64>,
}

/// What a tunnel needs to know whether its target is cut.
#[derive(Clone)]
struct TunnelState {
    blocked: Arc<RwLock<HashSet<String>>>,
    cuts: watch::Receiver<u64>,
}

impl TunnelState {
    fn is_blocked(&self, target: &str) -> bool {
        self.blocked.read().expect("proxy lock").contains(target)
    }
}

/// The longest `CONNECT` request head the proxy reads.
const MAX_CONNECT_HEAD_BYTES: usize = 8 * 1024;
/// How many accepted plain connections may wait for the HTTP server to take them.
const PLAIN_BACKLOG: usize = 64;

impl LinkProxy {
    pub async fn start() -> anyhow::Result<Self> {
        // A port no node of this process was given (crate::free_addr).
        let listener = TcpListener::bind(crate::free_addr().await?).await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(RwLock::new(HashSet::new()));
        let (cuts, cuts_rx) = watch::channel(0u64);
        let state = ProxyState {
            blocked: blocked.clone(),
            http: reqwest::Client::builder().no_proxy().build()?,
            cuts: cuts_rx.clone(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state);
        // One listener, two kinds of connection: the acceptor looks at the first byte of
        // each, keeps the tunnels (`C`ONNECT; no other method the peer client sends starts
        // with C) and hands the rest to the HTTP server.
        let (plain_tx, plain_rx) = mpsc::channel(PLAIN_BACKLOG);
        let tunnels = TunnelState {
            blocked: blocked.clone(),
            cuts: cuts_rx,
        };
        let acceptor = tokio::spawn(accept_loop(listener, plain_tx, tunnels));
        let server = tokio::spawn(async move {
            let handed = HandedOver { rx: plain_rx, addr };
            let _ = axum::serve(handed, app).await;
        });
        Ok(LinkProxy {
            addr,
            blocked,
            cuts,
            server,
            acceptor,
        })
    }

    /// Cut the link to `target`: plain requests to it hang, new tunnels to it are
    /// refused, and open tunnels to it are closed.
    pub fn block(&self, target: SocketAddr) {
        self.blocked
            .write()
            .expect("proxy lock")
            .insert(target.to_string());
        self.cuts.send_modify(|generation| *generation += 1);
    }

    pub fn unblock_all(&self) {
        self.blocked.write().expect("proxy lock").clear();
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.server.abort();
    }
}

/// The plain (non-`CONNECT`) connections, as a listener for `axum::serve`.
struct HandedOver {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for HandedOver {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The acceptor is gone (the proxy is being dropped): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    plain: mpsc::Sender<(TcpStream, SocketAddr)>,
    tunnels: TunnelState,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors or the like: let it pass rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let plain = plain.clone();
        let tunnels = tunnels.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == b'C' => tunnel(stream, tunnels).await,
                Ok(1) => {
                    let _ = plain.send((stream, from)).await;
                }
                _ => {} // closed before saying anything
            }
        });
    }
}

/// Forward a request that upgrades the connection: once the target switches protocols,
/// answer the same and copy bytes both ways until either side closes or the link is cut.
async fn forward_upgrade(state: ProxyState, target: String, mut req: Request) -> Response {
    use axum::http::header;
    let from_client = hyper::upgrade::on(&mut req);
    let mut out = state
        .http
        .request(req.method().clone(), req.uri().to_string());
    for (name, value) in req.headers().iter() {
        if name != "host" && name != "proxy-connection" {
            out = out.header(name, value);
        }
    }
    let resp = match out.send().await {
        Ok(resp) => resp,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        return (status, bytes).into_response();
    }
    let protocol = resp.headers().get(header::UPGRADE).cloned();
    let mut cuts = state.cuts.clone();
    cuts.borrow_and_update();
    let tunnels = TunnelState {
        blocked: state.blocked.clone(),
        cuts,
    };
    tokio::spawn(async move {
        let (Ok(upstream), Ok(client)) = (resp.upgrade().await, from_client.await) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = upstream;
        let mut cuts = tunnels.cuts.clone();
        let cut = async {
            loop {
                if cuts.changed().await.is_err() || tunnels.is_blocked(&target) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = cut => {}
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade");
    if let Some(protocol) = protocol {
        response = response.header(header::UPGRADE, protocol);
    }
    response
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Serve one `CONNECT host:port` request: refuse it if the link is cut, else connect,
/// answer 200 and copy bytes both ways until either side closes or the link is cut.
async fn tunnel(mut client: TcpStream, state: TunnelState) {
    let Some((target, early)) = read_connect_head(&mut client).await else {
        let _ = client
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    let mut cuts = state.cuts.clone();
    // Seen before the check below, so a cut from here on wakes the copy loop.
    cuts.borrow_and_update();
    if state.is_blocked(&target) {
        refuse(&mut client, &format!("link to {target} is cut")).await;
        return;
    }
    let mut upstream = match TcpStream::connect(&target).await {
        Ok(upstream) => upstream,
        Err(e) => {
            refuse(&mut client, &format!("cannot connect to {target}: {e}")).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    let cut = async {
        loop {
            if cuts.changed().await.is_err() || state.is_blocked(&target) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        // Dropping both sockets closes the tunnel: the sender sees its connection end.
        _ = cut => {}
    }
}

/// Read a `CONNECT` request head; its target (`host:port`) and any bytes sent after it.
async fn read_connect_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_CONNECT_HEAD_BYTES {
            return None;
        }
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    };
    let early = head.split_off(end);
    let text = std::str::from_utf8(&head).ok()?;
    let mut words = text.lines().next()?.split_whitespace();
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "CONNECT" || !version.starts_with("HTTP/1.") || !target.contains(':') {
        return None;
    }
    Some((target.to_string(), early))
}

async fn refuse(client: &mut TcpStream, why: &str) {
    let reply = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = client.write_all(reply.as_bytes()).await;
    let _ = client.shutdown().await;
}

async fn forward(State(state): State<ProxyState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return (StatusCode::BAD_REQUEST, "absolute-form URI required").into_response();
    };
    let cut = state
        .blocked
        .read()
        .expect("proxy lock")
        .contains(&authority);
    if cut {
        // A partition: the request goes nowhere; the sender's timeout ends it.
        std::future::pending::<()>().await;
    }
    if req.headers().contains_key(axum::http::header::UPGRADE) {
        return forward_upgrade(state, authority, req).await;
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut out = state.http.request(method, uri.to_string()).body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "proxy-connection" && name != "connection" {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
