//! Overload: what a node admits, and what it sheds, so that a crowd costs a bounded amount
//! of memory and a well-behaved client is still served.
//!
//! Four caps, each a `[limits]` key, each counted in `leasehold_shed_total{cap}` when hit:
//!
//! - `max_connections` and `max_connections_per_address`: checked when a client connection
//!   is accepted, before any TLS handshake or HTTP parsing ([`listener::CappedTcp`]). The
//!   permit travels with the connection ([`listener::Counted`]) and is returned when it
//!   closes. Past the node's cap a plain-HTTP client gets 503 `unavailable` with
//!   `Retry-After` (another node may serve it; the clients fail over), past its address's
//!   cap 429 `too_many_requests` (the limit is its own), and under TLS, where no reply can
//!   be made cheaply, the connection is closed. The peer listener is never capped.
//! - `max_requests_in_flight`: requests being worked on ([`admit`], the outermost layer of
//!   the client router, before the body is read). It never queues: a request that finds
//!   no room is answered 503 at once. Shedding follows [`Class`]: new holds and long-polls
//!   at 3/4 of the cap, other reads and writes at 7/8, and keepalives, extends, releases
//!   and revokes only at the full cap, because shedding those loses holds.
//!   `/healthz`, `/readyz` and `/metrics` are not counted (they are cheap, bounded by the
//!   connection caps, and what an operator needs most during overload).
//! - `max_long_polls`: requests that park waiting for a change (blocking acquires,
//!   blocking queries, waits for release), taken where the service is about to wait
//!   ([`Overload::long_poll`]); past it 503. A parked request gives back its in-flight
//!   permit, since it does no work while it waits.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use leasehold_api::error::{ApiError, ErrorCode};
use leasehold_config::Limits;

use crate::metrics::Metrics;

pub(crate) mod listener;

/// How long a shed client is told to wait before it tries this node again.
pub(crate) const RETRY_AFTER_MS: u64 = 1_000;

/// Which cap refused something (the `cap` label of `leasehold_shed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cap {
    Connections,
    ConnectionsPerAddress,
    RequestsInFlight,
    LongPolls,
}

impl Cap {
    pub(crate) const ALL: [Cap; 4] = [
        Cap::Connections,
        Cap::ConnectionsPerAddress,
        Cap::RequestsInFlight,
        Cap::LongPolls,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Cap::Connections => "connections",
            Cap::ConnectionsPerAddress => "connections_per_address",
            Cap::RequestsInFlight => "requests_in_flight",
            Cap::LongPolls => "long_polls",
        }
    }

    /// The `[limits]` key of this cap.
    fn key(self) -> &'static str {
        match self {
            Cap::Connections => "limits.max_connections",
            Cap::ConnectionsPerAddress => "limits.max_connections_per_address",
            Cap::RequestsInFlight => "limits.max_requests_in_flight",
            Cap::LongPolls => "limits.max_long_polls",
        }
    }

    /// The error a client refused by this cap gets: 429 for its own address's cap (it is
    /// the one to slow down), 503 with `Retry-After` for the node's (another node may
    /// serve it).
    pub(crate) fn error(self, cap: usize) -> ApiError {
        match self {
            Cap::ConnectionsPerAddress => {
                let mut e = ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "this address has {cap} connections open to this node, the most it \
                         may ({}); reuse connections or close some",
                        self.key()
                    ),
                );
                e.retry_after_ms = Some(RETRY_AFTER_MS);
                e
            }
            _ => ApiError::unavailable(
                format!(
                    "this node is overloaded ({} = {cap} reached); try another node or retry \
                     later",
                    self.key()
                ),
                RETRY_AFTER_MS,
            ),
        }
    }
}

/// What a request does, for the order of shedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `/healthz`, `/readyz`, `/metrics`: never counted.
    Probe,
    /// Starts something new or waits: acquires, registrations, new leases, long-polls.
    /// Shed first.
    Start,
    /// Everything else that is not [`Class::Keep`]: reads, lists, proclaims, admin.
    Other,
    /// Keeps or ends what is held: keepalives, extends, releases, revokes, resigns. Shed
    /// last.
    Keep,
}

impl Class {
    /// Of `method` on `path?query`.
    pub(crate) fn of(method: &Method, path: &str, query: Option<&str>) -> Class {
        if matches!(path, "/healthz" | "/readyz" | "/metrics") {
            return Class::Probe;
        }
        let held = ["/v1/leases/", "/v1/locks/", "/v1/semaphores/", "/v1/names/"]
            .iter()
            .any(|p| path.starts_with(p));
        // A wait of 0 (or one that does not parse, which validation refuses) is no wait.
        let waits = query.is_some_and(|q| {
            q.split('&').any(|pair| {
                pair.split_once('=').is_some_and(|(name, value)| {
                    name == "wait_ms" && value.parse::<u64>().is_ok_and(|ms| ms > 0)
                })
            })
        });
        // Only a lease's keepalive: a key may end in `/keepalive` (an acquire of it is not
        // one), while `/extend` is a reserved suffix of keys.
        let keepalive = path.starts_with("/v1/leases/")
            && path
                .strip_prefix("/v1/leases/")
                .and_then(|rest| rest.strip_suffix("/keepalive"))
                .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        match *method {
            Method::GET if waits || (path.starts_with("/v1/locks/") && path.ends_with("/wait")) => {
                Class::Start
            }
            Method::POST if path == "/v1/leases" => Class::Start,
            Method::POST if keepalive || (held && path.ends_with("/extend")) => Class::Keep,
            Method::POST
                if path.starts_with("/v1/locks/") || path.starts_with("/v1/semaphores/") =>
            {
                Class::Start
            }
            Method::PUT if path.starts_with("/v1/names/") => Class::Start,
            Method::DELETE if held => Class::Keep,
            _ => Class::Other,
        }
    }

    /// How many requests may be in flight for one of this class to be admitted.
    fn room(self, cap: usize) -> usize {
        match self {
            Class::Probe => usize::MAX,
            Class::Start => (cap * 3 / 4).max(1),
            Class::Other => (cap * 7 / 8).max(1),
            Class::Keep => cap,
        }
    }
}

/// One node's admission counts and caps.
pub(crate) struct Overload {
    limits: Limits,
    metrics: Arc<Metrics>,
    in_flight: AtomicUsize,
    long_polls: AtomicUsize,
    pub(crate) connections: Arc<listener::Connections>,
}

impl Overload {
    pub(crate) fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Overload> {
        for cap in Cap::ALL {
            // Every cap's series exists from the start (at 0), for rates and alerts.
            metrics.shed.with_label_values(&[cap.label()]);
        }
        Arc::new(Overload {
            limits: limits.clone(),
            connections: Arc::new(listener::Connections::new(
                limits.max_connections,
                limits.max_connections_per_address,
                metrics.clone(),
            )),
            metrics,
            in_flight: AtomicUsize::new(0),
            long_polls: AtomicUsize::new(0),
        })
    }

    /// Count a refusal by `cap`.
    pub(crate) fn shed(&self, cap: Cap) {
        self.metrics.shed.with_label_values(&[cap.label()]).inc();
    }

    /// Admit a request of `class`, or `None` when the in-flight count is at its class's
    /// room. Never waits.
    fn try_request(self: &Arc<Self>, class: Class) -> Option<InFlight> {
        let room = class.room(self.limits.max_requests_in_flight);
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < room).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        self.metrics.requests_in_flight.inc();
        Some(InFlight(self.clone()))
    }

    /// Begin a long-poll: a request about to park until something changes. Past
    /// `limits.max_long_polls`, 503 `unavailable` with `Retry-After`. The request's
    /// in-flight permit is returned when it parks ([`LongPoll::parked`]).
    pub(crate) fn long_poll(self: &Arc<Self>) -> Result<LongPoll, ApiError> {
        let cap = self.limits.max_long_polls;
        let admitted = self
            .long_polls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.shed(Cap::LongPolls);
            return Err(Cap::LongPolls.error(cap));
        }
        self.metrics.long_polls.inc();
        Ok(LongPoll(self.clone()))
    }
}

/// A request in flight, until dropped.
pub(crate) struct InFlight(Arc<Overload>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.requests_in_flight.dec();
    }
}

/// A long-poll, until dropped (`leasehold_long_polls_in_flight`).
pub(crate) struct LongPoll(Arc<Overload>);

impl LongPoll {
    /// The request parks now: it gives back its in-flight permit, as it does no work
    /// while it waits (its reply, later, is not counted again).
    pub(crate) fn parked(self) -> Self {
        let _ = REQUEST.try_with(|slot| slot.borrow_mut().take());
        self
    }
}

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.long_polls.dec();
    }
}

tokio::task_local! {
    /// The in-flight permit of the request this task serves, so that a long-poll can give
    /// it back when it parks.
    static REQUEST: RefCell<Option<InFlight>>;
}

/// Middleware (the outermost layer of the client router): admit the request under
/// `limits.max_requests_in_flight` by its [`Class`], or answer 503 at once.
pub(crate) async fn admit(State(o): State<Arc<Overload>>, req: Request, next: Next) -> Response {
    let class = Class::of(req.method(), req.uri().path(), req.uri().query());
    if class == Class::Probe {
        return next.run(req).await;
    }
    match o.try_request(class) {
        Some(permit) => {
            REQUEST
                .scope(RefCell::new(Some(permit)), next.run(req))
                .await
        }
        None => {
            o.shed(Cap::RequestsInFlight);
            Cap::RequestsInFlight
                .error(o.limits.max_requests_in_flight)
                .into_response()
        }
    }
}

/// File descriptors a node needs besides its client connections (peers, the log store,
/// the process's own).
const OTHER_FDS: libc::rlim_t = 256;

/// Raise the soft limit on open files to the hard one when `limits.max_connections` would
/// not fit under it (as Go's runtime does at start), and warn when even the hard limit is
/// too low: then accepts fail with EMFILE before the cap is reached, and the cap does not
/// say so.
pub(crate) fn raise_fd_limit(limits: &Limits) {
    let needed = (limits.max_connections as libc::rlim_t).saturating_add(OTHER_FDS);
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return;
    }
    let (soft, hard) = (rl.rlim_cur, rl.rlim_max);
    if soft >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: rl.rlim_max,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
    // one needs no privilege.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    let now = if ok { hard } else { soft };
    if now < needed {
        tracing::warn!(
            open_files_limit = now,
            max_connections = limits.max_connections,
            "the open-files limit (ulimit -n) is below limits.max_connections + {OTHER_FDS}: \
             connections past it fail before the cap refuses them with a reply; raise the \
             limit (LimitNOFILE=) or lower limits.max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_kept_last_and_started_first() {
        let c = |m: Method, p: &str, q: Option<&str>| Class::of(&m, p, q);
        assert_eq!(c(Method::GET, "/healthz", None), Class::Probe);
        assert_eq!(c(Method::GET, "/metrics", None), Class::Probe);
        assert_eq!(c(Method::POST, "/v1/leases", None), Class::Start);
        assert_eq!(c(Method::POST, "/v1/leases/7/keepalive", None), Class::Keep);
        assert_eq!(c(Method::DELETE, "/v1/leases/7", None), Class::Keep);
        assert_eq!(c(Method::POST, "/v1/locks/a/b", None), Class::Start);
        assert_eq!(c(Method::POST, "/v1/locks/a/extend", None), Class::Keep);
        assert_eq!(
            c(Method::DELETE, "/v1/locks/a", Some("owner=x")),
            Class::Keep
        );
        assert_eq!(c(Method::POST, "/v1/semaphores/s", None), Class::Start);
        assert_eq!(
            c(Method::POST, "/v1/semaphores/s/extend", None),
            Class::Keep
        );
        assert_eq!(c(Method::PUT, "/v1/names/n", None), Class::Start);
        assert_eq!(c(Method::POST, "/v1/names/n/extend", None), Class::Keep);
        assert_eq!(c(Method::DELETE, "/v1/names/n", None), Class::Keep);
        assert_eq!(c(Method::PATCH, "/v1/names/n", None), Class::Other);
        assert_eq!(c(Method::GET, "/v1/locks/a", None), Class::Other);
        assert_eq!(
            c(Method::GET, "/v1/locks/a", Some("index=3&wait_ms=100")),
            Class::Start
        );
        assert_eq!(c(Method::GET, "/v1/locks/a/wait", None), Class::Start);
        // A wait of 0 is a plain read; a key that ends in `/keepalive` is no keepalive.
        assert_eq!(
            c(Method::GET, "/v1/locks/a", Some("index=3&wait_ms=0")),
            Class::Other
        );
        assert_eq!(c(Method::POST, "/v1/locks/a/keepalive", None), Class::Start);
        assert_eq!(
            c(Method::POST, "/v1/leases/7/8/keepalive", None),
            Class::Other
        );
        assert_eq!(
            c(Method::GET, "/v1/status", Some("wait_ms=5")),
            Class::Start
        );
        assert_eq!(
            c(Method::DELETE, "/v1/cluster/members/2", None),
            Class::Other
        );
    }

    #[test]
    fn new_work_is_shed_before_reads_and_reads_before_keepalives() {
        assert_eq!(Class::Start.room(4), 3);
        assert_eq!(Class::Other.room(4), 3);
        assert_eq!(Class::Keep.room(4), 4);
        assert_eq!(Class::Start.room(1024), 768);
        assert_eq!(Class::Other.room(1024), 896);
        assert_eq!(Class::Keep.room(1), 1);
        assert_eq!(Class::Start.room(1), 1);
    }
}
