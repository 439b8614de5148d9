//! The crowd's and the harness's side of `loadgen overload`: sockets from many loopback
//! source addresses, raw HTTP/1.1 exchanges, probes of a node, the calm client, and
//! scrapes of `/metrics`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold_api::client::Client;
use leasehold_api::wire::{AcquireRequest, ReleaseParams};
use leasehold_api::LeaseService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::PER_SOURCE;

pub(super) fn source(i: usize) -> IpAddr {
    let n = 2 + i / PER_SOURCE;
    assert!(n < 255, "too many connections for 127.0.0.2..254");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n as u8))
}

pub(super) async fn connect(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source(i), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

pub(super) fn request(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nhost: leasehold\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nhost: leasehold\r\n\r\n"),
    }
}

/// Send `req` and read the status of the reply (within `within`); name the outcome.
pub(super) async fn status_of(tcp: &mut TcpStream, req: &str, within: Duration) -> String {
    if let Err(e) = tcp.write_all(req.as_bytes()).await {
        return format!("write failed ({:?})", e.kind());
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, tcp.read(&mut buf)).await {
        Err(_) => "no reply in time".into(),
        Ok(Ok(0)) => "closed without a reply".into(),
        Ok(Err(e)) => format!("{:?}", e.kind()),
        Ok(Ok(n)) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let code = head
                .split("\"code\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            format!("{status}{code}")
        }
    }
}

/// One probe of `/healthz` and `/readyz`: statuses and the slower of the two, in ms.
pub(super) async fn probe(http: &reqwest::Client, url: &str) -> String {
    let start = Instant::now();
    let mut parts = Vec::new();
    for path in ["/healthz", "/readyz"] {
        let r = http
            .get(format!("{url}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        parts.push(match r {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(_) => "refused".into(),
        });
    }
    format!(
        "{} in {:.0} ms",
        parts.join("/"),
        start.elapsed().as_secs_f64() * 1000.0
    )
}

/// The well-behaved client: acquire+release cycles on its own key until `stop`.
pub(super) async fn calm(client: Client, stop: Arc<AtomicBool>) -> (Vec<f64>, u64) {
    let (mut times, mut failed) = (Vec::new(), 0);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let start = Instant::now();
        let req = AcquireRequest {
            owner: "calm".into(),
            ttl_ms: Some(10_000),
            ..Default::default()
        };
        let ok = match client.acquire_lock("calm/key", req).await {
            Ok(hold) => {
                let params = ReleaseParams {
                    owner: "calm".into(),
                    token: hold.token,
                    ..Default::default()
                };
                client.release_lock("calm/key", params).await.is_ok()
            }
            Err(_) => false,
        };
        if ok {
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n.is_multiple_of(16) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    (times, failed)
}

pub(super) fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)]
}

/// A scrape of node 1's `/metrics`: one sample by its exact name and labels.
pub(super) async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
