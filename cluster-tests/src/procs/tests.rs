use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leasehold_api::client::is_tls_failure;
use leasehold_api::{Client, LeaseService};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::LinkProxy;

/// A TCP server that echoes every connection.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Open a tunnel to `target`; the proxy's status code and, if 200, the stream.
async fn connect(proxy: SocketAddr, target: SocketAddr) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "proxy closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)[9..12].parse().unwrap();
    (status, s)
}

async fn echoes(s: &mut TcpStream, what: &[u8]) -> bool {
    if s.write_all(what).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; what.len()];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await;
    matches!(read, Ok(Ok(_))) && buf == what
}

/// Reads until the tunnel ends; panics if it stays open.
async fn closes(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel stayed open after the cut");
}

#[tokio::test]
async fn tunnels_carry_bytes_and_a_cut_closes_them_and_refuses_new_ones() {
    let proxy = LinkProxy::start().await.unwrap();
    let (a, b) = (echo_server().await, echo_server().await);
    let (status, mut to_a) = connect(proxy.addr, a).await;
    assert_eq!(status, 200);
    assert!(echoes(&mut to_a, b"hello").await);
    let (_, mut to_b) = connect(proxy.addr, b).await;
    assert!(echoes(&mut to_b, b"hi b").await);

    proxy.block(a);
    closes(&mut to_a).await;
    assert_eq!(
        connect(proxy.addr, a).await.0,
        502,
        "a new tunnel is refused"
    );
    assert!(echoes(&mut to_b, b"still").await, "other links stay up");

    proxy.unblock_all();
    let (status, mut again) = connect(proxy.addr, a).await;
    assert_eq!(status, 200);
    assert!(echoes(&mut again, b"healed").await);

    // A target that does not listen: refused, not hung.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(connect(proxy.addr, gone).await.0, 502);
    // Dropping the proxy closes its tunnels.
    drop(proxy);
    closes(&mut to_b).await;
}

#[tokio::test]
async fn plain_requests_are_still_forwarded_and_blackholed() {
    let app = axum::Router::new().route("/x", axum::routing::get(|| async { "plain" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let proxy = LinkProxy::start().await.unwrap();
    let http = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", proxy.addr)).unwrap())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let url = format!("http://{target}/x");
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "plain"
    );
    proxy.block(target);
    assert!(http.get(&url).send().await.unwrap_err().is_timeout());
    proxy.unblock_all();
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "plain"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed.
struct Pki {
    ca_pem: String,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = leaf(vec!["client".into()]);
    Pki {
        ca_pem: ca.pem(),
        server: (
            vec![server_cert.der().clone()],
            PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
        ),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

struct TlsListener {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, from)) = self.tcp.accept().await else {
                continue;
            };
            // Inline handshakes are fine for a test server; failed ones are the point.
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, from);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An https server answering `/readyz`; with `client_ca`, it requires a client
/// certificate signed by it.
async fn https_server(pki: &Pki, client_ca: bool) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let (chain, key) = (pki.server.0.clone(), pki.server.1.clone_key());
    let config = builder.with_single_cert(chain, key).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    let app = axum::Router::new().route("/readyz", axum::routing::get(|| async { "{}" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn https_goes_through_a_tunnel_that_a_cut_closes() {
    let pki = pki();
    let server = https_server(&pki, false).await;
    let proxy = LinkProxy::start().await.unwrap();
    let http = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.addr)).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("https://{server}/readyz");
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "{}"
    );
    // The pooled TLS connection does not survive the cut, and no new one is made.
    proxy.block(server);
    let e = http.get(&url).send().await.unwrap_err();
    assert!(!e.is_timeout(), "refused at once, not hung: {e:?}");
    proxy.unblock_all();
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "{}"
    );
}

#[tokio::test]
async fn the_client_trusts_the_given_ca_and_presents_its_certificate() {
    let pki = pki();
    let server = https_server(&pki, false).await;
    let url = format!("https://{server}");
    let builder = || {
        Client::builder([url.clone()])
            .attempt_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    };
    builder()
        .ca_cert_pem(pki.ca_pem.clone())
        .build()
        .unwrap()
        .ready()
        .await
        .unwrap();
    // Without the CA: the handshake fails, and the message says what to check.
    let e = builder().build().unwrap().ready().await.unwrap_err();
    assert!(is_tls_failure(&e), "{e}");
    assert!(
        e.message.contains(&url) && e.message.contains("--cacert"),
        "{e}"
    );

    let mutual = format!("https://{}", https_server(&pki, true).await);
    let with_ca = || {
        Client::builder([mutual.clone()])
            .attempt_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
            .ca_cert_pem(pki.ca_pem.clone())
    };
    with_ca()
        .identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
        .build()
        .unwrap()
        .ready()
        .await
        .unwrap();
    let e = with_ca().build().unwrap().ready().await.unwrap_err();
    assert!(is_tls_failure(&e), "{e}");
    assert!(e.message.contains("--cert"), "{e}");

    // A key that is not the certificate's is refused when the client is built.
    let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let e = with_ca()
        .identity_pem(pki.client_cert_pem.clone(), other)
        .build()
        .unwrap_err();
    assert!(e.message.starts_with("client_key: "), "{e}");
    assert!(
        e.message
            .contains("is not the private key of the certificate"),
        "{e}"
    );
}
