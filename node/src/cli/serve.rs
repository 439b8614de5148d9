//! `leasehold serve`: run a node until SIGTERM or Ctrl-C (SIGHUP reloads), tell systemd
//! when it is ready, and restart the process in place once a storage fault is over.

use std::time::Duration;

use leasehold_node::Node;
use sd_notify::NotifyState;

use super::{init_tracing, ServeArgs};

pub(super) async fn serve(args: ServeArgs) -> i32 {
    let config = match args.config.load() {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(config.log.format);
    let started = match args.rejoin {
        true => Node::rejoin(config).await,
        false => Node::start(config).await,
    };
    let node = match started {
        Ok(node) => node,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return 1;
        }
    };
    eprintln!(
        "leasehold node {} serving {} on {} (peers on {})",
        node.node_id(),
        if node.client_url().starts_with("https") {
            "HTTPS"
        } else {
            "HTTP"
        },
        node.client_url(),
        node.peer_addr()
    );
    let notifier = tokio::spawn(notify_when_ready(node.service()));
    // A storage fault stops the node's Raft core; the node keeps answering (503 naming the
    // disk) and probes its data directory. Once that is writable again, the process
    // restarts itself (same pid, arguments and environment) to reopen the data directory
    // from scratch: a sled call stuck since the fault may still hold the old handle.
    let storage_back = tokio::select! {
        _ = serve_until_stopped(&node) => false,
        _ = node.storage_writable_again() => true,
    };
    notifier.abort();
    if !storage_back {
        eprintln!("leasehold: shutting down");
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
        node.shutdown().await;
        return 0;
    }
    eprintln!("leasehold: the data directory is writable again; restarting this process");
    let _ = sd_notify::notify(&[NotifyState::Status(
        "restarting in place after a storage fault",
    )]);
    let _ = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
    let err = restart_process();
    eprintln!(
        "leasehold: could not restart itself ({err}); exiting with {EXIT_RESTART} for the \
         supervisor to start it again"
    );
    EXIT_RESTART
}

/// systemd's `Type=notify` (as etcd does): `READY=1` once the node is ready in the sense
/// of `/readyz` (a leader is known and this node has applied its commit index), with a
/// `STATUS=` line meanwhile; `STOPPING=1` is sent on shutdown. Nothing without
/// `NOTIFY_SOCKET`.
async fn notify_when_ready(service: leasehold_node::NodeService) {
    use leasehold_api::LeaseService;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut said_waiting = false;
    loop {
        match service.ready().await {
            Ok(()) => {
                if let Err(e) =
                    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("ready")])
                {
                    tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
                }
                return;
            }
            Err(e) if !said_waiting => {
                let status = format!("waiting to be ready: {}", e.message);
                let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
                said_waiting = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The exit status that asks the supervisor for a restart (EX_TEMPFAIL).
const EXIT_RESTART: i32 = 75;

/// Replace this process with a fresh run of the same binary, arguments and environment.
/// Returns only if that failed.
fn restart_process() -> std::io::Error {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        match std::env::current_exe() {
            // Never `--rejoin` again: the data directory is the one to reopen.
            Ok(exe) => std::process::Command::new(exe)
                .args(std::env::args_os().skip(1).filter(|a| a != "--rejoin"))
                .exec(),
            Err(e) => e,
        }
    }
    #[cfg(not(unix))]
    {
        std::io::Error::other("restarting in place needs unix")
    }
}

/// Serve until SIGTERM or Ctrl-C; on SIGHUP, re-read the TLS certificates and the tokens
/// file (what is bad keeps what was in force, and the log says why).
async fn serve_until_stopped(node: &Node) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            let stop = wait_for_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hangup.recv() => match node.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: reload refused"),
                    },
                }
            }
        }
    }
    wait_for_signal().await
}

pub(super) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
