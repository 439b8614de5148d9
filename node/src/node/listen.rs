//! The node's two listeners: addresses, TLS configs, the server tasks.

use super::*;

pub(super) fn local_addr(
    listener: &TcpListener,
    what: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Serve every request of `router` in `span`. axum runs each connection in a task of its
/// own, which does not inherit the caller's span, so the span is entered per request.
pub(super) fn in_span(router: axum::Router, span: &Span) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        span.clone(),
        |State(span): State<Span>, req: Request, next: Next| next.run(req).instrument(span),
    ))
}

pub(super) fn client_listener_config(m: &Material) -> Arc<rustls::ServerConfig> {
    m.client_listener.clone()
}

pub(super) fn peer_listener_config(m: &Material) -> Arc<rustls::ServerConfig> {
    m.peer_listener.clone()
}

/// Serve `router` on `listener`: plain HTTP, or only HTTPS with `tls`.
pub(super) fn serve(
    listener: CappedTcp,
    tls: Option<(Arc<Tls>, ServerConfigOf)>,
    router: axum::Router,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, StartError> {
    let bind_err = |source| StartError::Bind {
        what: "listener",
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    };
    Ok(match tls {
        None => spawn_server(listener, router, cancel),
        Some((tls, config)) => {
            let listener = TlsListener::new(listener, tls, config).map_err(bind_err)?;
            spawn_server(listener, router, cancel)
        }
    })
}

/// Run axum on `listener` until `cancel`, in the current span.
pub(super) fn spawn_server<L>(
    listener: L,
    router: axum::Router,
    cancel: CancellationToken,
) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(
        async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = result {
                warn!(error = %e, "listener stopped with an error");
            }
        }
        .in_current_span(),
    )
}
