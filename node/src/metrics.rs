//! The node's Prometheus metrics (`GET /metrics`), through the `prometheus` crate.
//!
//! Each node has its own [`Registry`] (several nodes can run in one process: embedded, or
//! the in-process test clusters), so nothing here is global. Families, named after
//! etcd's and Consul's where they have one (docs and alert rules in `deploy/prometheus/`):
//!
//! - HTTP: `leasehold_http_requests_total{method,route,status}` and
//!   `leasehold_http_request_duration_seconds{method,route}`. `route` is the route
//!   template (`/v1/locks/{*key}`), never a key, so the label set stays bounded.
//! - Raft: `leasehold_raft_proposals_total`, `_proposals_failed_total`,
//!   `_applied_entries_total`, `_leader_changes_seen_total`, and gauges for leadership,
//!   term, indexes, voters and (on the leader) reachable voters.
//! - Disk: `leasehold_disk_wal_fsync_duration_seconds` (every fsync of the Raft log),
//!   `leasehold_disk_wal_appends_per_fsync` (how many appends each fsync made durable),
//!   `leasehold_snapshot_duration_seconds` (every snapshot build), `leasehold_storage_failed`.
//! - Locks and leases, as this node applied them: `leasehold_grants_total{kind}`,
//!   `leasehold_handoffs_total{kind}` (a grant to a queued waiter), `leasehold_leases_expired_total`,
//!   `leasehold_keepalives_total` (served by this node), and gauges `leasehold_leases`,
//!   `leasehold_holds{kind}`, `leasehold_waiters{kind}`, `leasehold_long_polls_in_flight`.
//! - Overload (`node::overload`): `leasehold_shed_total{cap}` (connections, requests and
//!   long-polls refused at a `[limits]` cap), gauges `leasehold_client_connections` and
//!   `leasehold_requests_in_flight`.
//! - Batching: what this node sent the leader in batches (the figures of docs/performance.md).
//! - Process: `process_resident_memory_bytes`, `process_cpu_seconds_total`,
//!   `process_open_fds` and the rest of the standard process collector (Linux).
//!
//! Counters that live elsewhere (in the state machine's apply counts, the batcher, the
//! log store) are read at scrape time and set here, so the hot paths pay one relaxed
//! atomic add and nothing else.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 100 µs to 10 s (etcd's fsync buckets start at 1 ms; a
/// lock service's requests are often faster).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How many chart samples the status page gets: 5 minutes at one every 2 s.
const SERIES_LEN: usize = 150;
/// How often the status page's charts get a sample.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One point of the status page's charts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub at_ms: u64,
    pub grants_per_s: f64,
    pub handoffs_per_s: f64,
    pub p99_ms: Option<f64>,
}

/// What the previous sample read, to take differences from.
struct LastRead {
    at: std::time::Instant,
    grants: u64,
    handoffs: u64,
    /// Cumulative counts of the write-latency buckets.
    buckets: Vec<u64>,
}

/// One node's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub proposals: IntCounter,
    pub proposals_failed: IntCounter,
    pub leader_changes: IntCounter,
    pub fsync: Histogram,
    pub appends_per_fsync: Histogram,
    pub snapshot: Histogram,
    pub keepalives: IntCounter,
    pub long_polls: IntGauge,
    pub shed: IntCounterVec,
    pub client_connections: IntGauge,
    pub requests_in_flight: IntGauge,
    // Set at scrape time from counts kept elsewhere.
    applied_entries: IntCounter,
    grants: IntCounterVec,
    handoffs: IntCounterVec,
    expired: IntCounter,
    gauges: Gauges,
    batching: Batching,
    series: std::sync::Mutex<(std::collections::VecDeque<Sample>, Option<LastRead>)>,
}

struct Gauges {
    has_leader: IntGauge,
    is_leader: IntGauge,
    term: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    voters: IntGauge,
    voters_reachable: IntGauge,
    storage_failed: IntGauge,
    leases: IntGauge,
    holds: IntGaugeVec,
    waiters: IntGaugeVec,
    last_token: IntGauge,
}

struct Batching {
    keepalives_batched: IntCounter,
    keepalive_batches: IntCounter,
    writes_batched: IntCounter,
    write_batches: IntCounter,
    confirm_rounds: IntCounter,
    confirm_lease_hits: IntCounter,
    peer_streams_opened: IntCounter,
}

/// What a scrape reads from the rest of the node.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub voters: u64,
    /// On the leader only.
    pub voters_reachable: Option<u64>,
    pub storage_failed: bool,
    pub leases: u64,
    /// Per kind (`lock`, `name`, `semaphore`): holds and queued waiters.
    pub holds: [(&'static str, u64, u64); 3],
    pub last_token: u64,
    pub applied_entries: u64,
    /// Per kind: grants and handoffs applied on this node.
    pub grants: [(&'static str, u64, u64); 3],
    pub expired: u64,
    pub keepalives_batched: u64,
    pub keepalive_batches: u64,
    pub writes_batched: u64,
    pub write_batches: u64,
    pub confirm_rounds: u64,
    pub confirm_lease_hits: u64,
    pub peer_streams_opened: u64,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("a valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

fn by_kind_counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["kind"]).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn by_kind_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["kind"]).expect("a valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

/// Set a counter that mirrors a count kept elsewhere (which only grows, or restarts from 0
/// when the state machine is replaced by a snapshot: a counter reset, as Prometheus knows).
fn mirror(c: &IntCounter, value: u64) {
    let now = c.get();
    if value >= now {
        c.inc_by(value - now);
    } else {
        c.reset();
        c.inc_by(value);
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            r.register(Box::new(process)).expect("registered once");
        }
        let http_requests = IntCounterVec::new(
            Opts::new(
                "leasehold_http_requests_total",
                "client HTTP requests served, by method, route template and status",
            ),
            &["method", "route", "status"],
        )
        .expect("a valid metric");
        r.register(Box::new(http_requests.clone()))
            .expect("registered once");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "leasehold_http_request_duration_seconds",
                "client HTTP request latency, by method and route template (long-polls include their wait)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method", "route"],
        )
        .expect("a valid metric");
        r.register(Box::new(http_duration.clone()))
            .expect("registered once");
        let shed = IntCounterVec::new(
            Opts::new(
                "leasehold_shed_total",
                "client connections and requests refused at a [limits] cap, by cap",
            ),
            &["cap"],
        )
        .expect("a valid metric");
        r.register(Box::new(shed.clone())).expect("registered once");
        let gauges = Gauges {
            has_leader: gauge(
                &r,
                "leasehold_raft_has_leader",
                "1 if this node knows a leader",
            ),
            is_leader: gauge(&r, "leasehold_raft_is_leader", "1 if this node leads"),
            term: gauge(&r, "leasehold_raft_term", "current raft term"),
            commit_index: gauge(
                &r,
                "leasehold_raft_commit_index",
                "the leader's commit index as this node knows it",
            ),
            applied_index: gauge(&r, "leasehold_raft_applied_index", "last applied log index"),
            last_log_index: gauge(&r, "leasehold_raft_last_log_index", "last log index"),
            voters: gauge(
                &r,
                "leasehold_raft_voters",
                "voting members in the membership",
            ),
            voters_reachable: gauge(
                &r,
                "leasehold_raft_voters_reachable",
                "voters that keep up with the leader, itself included (leader only; -1 elsewhere)",
            ),
            storage_failed: gauge(
                &r,
                "leasehold_storage_failed",
                "1 if this node's Raft core stopped on a storage error (a full or failing disk)",
            ),
            leases: gauge(&r, "leasehold_leases", "live leases"),
            holds: by_kind_gauge(
                &r,
                "leasehold_holds",
                "held locks, names and semaphore slots",
            ),
            waiters: by_kind_gauge(&r, "leasehold_waiters", "queued waiters on held keys"),
            last_token: gauge(&r, "leasehold_last_token", "the last fencing token issued"),
        };
        let batching = Batching {
            keepalives_batched: counter(
                &r,
                "leasehold_keepalives_batched_total",
                "keepalives this node sent to the leader in batches",
            ),
            keepalive_batches: counter(
                &r,
                "leasehold_keepalive_batches_total",
                "keepalive batches this node sent to the leader",
            ),
            writes_batched: counter(
                &r,
                "leasehold_writes_batched_total",
                "writes this node forwarded to the leader in batches",
            ),
            write_batches: counter(
                &r,
                "leasehold_write_batches_total",
                "write batches this node forwarded to the leader",
            ),
            confirm_rounds: counter(
                &r,
                "leasehold_confirm_rounds_total",
                "leadership-confirmation rounds this node ran as leader",
            ),
            confirm_lease_hits: counter(
                &r,
                "leasehold_confirm_lease_hits_total",
                "leadership confirmations this node answered on its leader lease, without a round",
            ),
            peer_streams_opened: counter(
                &r,
                "leasehold_peer_streams_opened_total",
                "peer streams this node opened (one per peer while the peer stays up)",
            ),
        };
        Metrics {
            http_requests,
            http_duration,
            proposals: counter(
                &r,
                "leasehold_raft_proposals_total",
                "commands this node proposed as leader",
            ),
            proposals_failed: counter(
                &r,
                "leasehold_raft_proposals_failed_total",
                "proposals that failed (leadership lost, no quorum, storage)",
            ),
            leader_changes: counter(
                &r,
                "leasehold_raft_leader_changes_seen_total",
                "leader changes this node has seen",
            ),
            fsync: histogram(
                &r,
                "leasehold_disk_wal_fsync_duration_seconds",
                "latency of the Raft log's fsyncs",
            ),
            appends_per_fsync: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "leasehold_disk_wal_appends_per_fsync",
                        "appends of the Raft log each fsync made durable (group commit)",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
                )
                .expect("a valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            snapshot: histogram(
                &r,
                "leasehold_snapshot_duration_seconds",
                "time to build (copy, encode and persist) a snapshot",
            ),
            keepalives: counter(
                &r,
                "leasehold_keepalives_total",
                "lease and hold keepalives served by this node",
            ),
            long_polls: gauge(
                &r,
                "leasehold_long_polls_in_flight",
                "blocking acquires, blocking queries and waits for release open on this node",
            ),
            shed,
            client_connections: gauge(
                &r,
                "leasehold_client_connections",
                "client connections open on this node (the peer listener's are not counted)",
            ),
            requests_in_flight: gauge(
                &r,
                "leasehold_requests_in_flight",
                "client requests being worked on by this node (parked long-polls not included)",
            ),
            applied_entries: counter(
                &r,
                "leasehold_raft_applied_entries_total",
                "log entries this node applied (committed)",
            ),
            grants: by_kind_counter(
                &r,
                "leasehold_grants_total",
                "holds granted, as this node applied them",
            ),
            handoffs: by_kind_counter(
                &r,
                "leasehold_handoffs_total",
                "holds granted to a queued waiter (a handoff), as this node applied them",
            ),
            expired: counter(
                &r,
                "leasehold_leases_expired_total",
                "leases that expired, as this node applied them",
            ),
            gauges,
            batching,
            series: std::sync::Mutex::new((std::collections::VecDeque::new(), None)),
            registry: r,
        }
    }

    /// Cumulative counts of the latency buckets of the writes this node served (every
    /// route, methods that change state).
    fn write_buckets(&self) -> Vec<u64> {
        use prometheus::core::Collector;
        let mut sums = vec![0u64; LATENCY_BUCKETS.len()];
        for family in self.http_duration.collect() {
            for metric in family.get_metric() {
                let write = metric.get_label().iter().any(|l| {
                    l.name() == "method" && matches!(l.value(), "POST" | "PUT" | "PATCH" | "DELETE")
                });
                if !write {
                    continue;
                }
                for (sum, bucket) in sums.iter_mut().zip(metric.get_histogram().get_bucket()) {
                    *sum += bucket.cumulative_count();
                }
            }
        }
        sums
    }

    /// Take a chart sample now: rates of grants and handoffs (the totals this node
    /// applied) and the write p99 since the previous sample.
    pub(crate) fn sample(&self, now_ms: u64, grants: u64, handoffs: u64) {
        let buckets = self.write_buckets();
        let now = std::time::Instant::now();
        let mut guard = self.series.lock().expect("series lock");
        let (series, last) = &mut *guard;
        if let Some(prev) = last.as_ref() {
            let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
            let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
            let deltas: Vec<u64> = buckets
                .iter()
                .zip(&prev.buckets)
                .map(|(n, p)| n.saturating_sub(*p))
                .collect();
            series.push_back(Sample {
                at_ms: now_ms,
                grants_per_s: rate(grants, prev.grants),
                handoffs_per_s: rate(handoffs, prev.handoffs),
                p99_ms: quantile(&deltas, 0.99).map(|s| s * 1000.0),
            });
            while series.len() > SERIES_LEN {
                series.pop_front();
            }
        }
        *last = Some(LastRead {
            at: now,
            grants,
            handoffs,
            buckets,
        });
    }

    /// The chart samples, oldest first.
    pub(crate) fn series(&self) -> Vec<Sample> {
        self.series
            .lock()
            .expect("series lock")
            .0
            .iter()
            .copied()
            .collect()
    }

    /// Record one served client request.
    pub(crate) fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, after setting what is read at scrape time.
    pub(crate) fn render(&self, s: &Snapshot) -> String {
        let g = &self.gauges;
        let set = |gauge: &IntGauge, v: u64| gauge.set(v.min(i64::MAX as u64) as i64);
        g.has_leader.set(i64::from(s.has_leader));
        g.is_leader.set(i64::from(s.is_leader));
        set(&g.term, s.term);
        set(&g.commit_index, s.commit_index);
        set(&g.applied_index, s.applied_index);
        set(&g.last_log_index, s.last_log_index);
        set(&g.voters, s.voters);
        g.voters_reachable
            .set(s.voters_reachable.map_or(-1, |v| v as i64));
        g.storage_failed.set(i64::from(s.storage_failed));
        set(&g.leases, s.leases);
        set(&g.last_token, s.last_token);
        for (kind, holds, waiters) in s.holds {
            set(&g.holds.with_label_values(&[kind]), holds);
            set(&g.waiters.with_label_values(&[kind]), waiters);
        }
        mirror(&self.applied_entries, s.applied_entries);
        for (kind, grants, handoffs) in s.grants {
            mirror(&self.grants.with_label_values(&[kind]), grants);
            mirror(&self.handoffs.with_label_values(&[kind]), handoffs);
        }
        mirror(&self.expired, s.expired);
        let b = &self.batching;
        mirror(&b.keepalives_batched, s.keepalives_batched);
        mirror(&b.keepalive_batches, s.keepalive_batches);
        mirror(&b.writes_batched, s.writes_batched);
        mirror(&b.write_batches, s.write_batches);
        mirror(&b.confirm_rounds, s.confirm_rounds);
        mirror(&b.confirm_lease_hits, s.confirm_lease_hits);
        mirror(&b.peer_streams_opened, s.peer_streams_opened);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The `q` quantile of a histogram given as cumulative bucket counts over
/// [`LATENCY_BUCKETS`] (in seconds), interpolated within its bucket as Prometheus's
/// `histogram_quantile` does; `None` when nothing was observed. Past the last bucket it
/// is the last bound.
fn quantile(cumulative: &[u64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (count, &upper) in cumulative.iter().zip(LATENCY_BUCKETS) {
        if *count as f64 >= rank {
            let in_bucket = (*count - below) as f64;
            let share = if in_bucket > 0.0 {
                (rank - below as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * share);
        }
        below = *count;
        lower = upper;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        assert_eq!(quantile(&vec![0; LATENCY_BUCKETS.len()], 0.99), None);
        // 100 observations, all in the (0.001, 0.0025] bucket.
        let mut c = vec![0u64; LATENCY_BUCKETS.len()];
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if *b >= 0.0025 {
                c[i] = 100;
            }
        }
        let p99 = quantile(&c, 0.99).unwrap();
        assert!(p99 > 0.001 && p99 <= 0.0025, "{p99}");
        // Everything past the last bucket: the last bound.
        let mut beyond = vec![0u64; LATENCY_BUCKETS.len()];
        beyond[LATENCY_BUCKETS.len() - 1] = 0;
        assert_eq!(quantile(&beyond, 0.5), None);
    }
}
