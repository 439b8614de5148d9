//! A Jepsen-style workload, its recorded history, and the checker.
//!
//! Clients (spread over all nodes, failing over between them) contend on a few keys with
//! `Lock` guards and campaign for a few names with `Election` guards, renewals on. Each
//! hold is recorded as the interval in which its client *believed* it held: from the
//! moment the grant reached it until it decided to release, or until its client deadline
//! (`valid_until`, SPEC §2 rule 5) when it lost the hold. The checker then requires, per
//! key: no two believed intervals overlap, and tokens strictly increase in grant order.
//! Every acquire must end with a grant or a documented error within its deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_api::guard::{Election, Lock, LockGuard};
use leasehold_api::{Client, ErrorCode, GuardError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util_free::Stop;

/// One believed hold.
#[derive(Debug, Clone)]
pub struct Hold {
    pub key: String,
    pub client: usize,
    pub token: u64,
    /// The lease the hold lived under.
    pub lease: u64,
    pub start: Instant,
    pub end: Instant,
    /// Why and when the hold was lost, if it was (`end` is then the earlier of the moment
    /// the client noticed and its client deadline).
    pub lost: Option<String>,
    pub noticed: Option<Instant>,
}

impl Hold {
    fn describe(&self, base: Instant) -> String {
        // Relative to `base`, and as wall-clock time to match the nodes' logs.
        let (now, wall_now) = (Instant::now(), std::time::SystemTime::now());
        let at = |t: Instant| {
            let wall = wall_now - (now - t);
            let since_epoch = wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!(
                "{:.1} ms (unix {:.6})",
                (t - base).as_secs_f64() * 1e3,
                since_epoch.as_secs_f64()
            )
        };
        let mut s = format!(
            "client {} token {} lease {}: {} .. {}",
            self.client,
            self.token,
            self.lease,
            at(self.start),
            at(self.end)
        );
        if let (Some(reason), Some(noticed)) = (&self.lost, self.noticed) {
            s.push_str(&format!(", lost (noticed at {}): {reason}", at(noticed)));
        }
        s
    }
}

/// What the workload did.
#[derive(Default)]
pub struct History {
    holds: Mutex<Vec<Hold>>,
    pub attempts: AtomicU64,
    pub releases: AtomicU64,
    pub losses: AtomicU64,
    /// Acquires that ended with an error, by code.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Acquires that neither granted nor failed within their deadline.
    pub hung: AtomicU64,
}

impl History {
    fn record(&self, hold: Hold) {
        self.holds.lock().expect("history lock").push(hold);
    }

    fn fail(&self, code: &str) {
        *self
            .failures
            .lock()
            .expect("history lock")
            .entry(code.to_string())
            .or_default() += 1;
    }

    pub fn holds(&self) -> Vec<Hold> {
        self.holds.lock().expect("history lock").clone()
    }

    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures.lock().expect("history lock").clone()
    }
}

/// A small deterministic generator (xorshift), so no dependency is needed for dice.
struct Dice(u64);

impl Dice {
    fn new(seed: u64) -> Self {
        Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub lock_clients: usize,
    pub keys: Vec<String>,
    pub election_clients: usize,
    pub names: Vec<String>,
    pub ttl: Duration,
    pub wait: Duration,
    pub hold_min: Duration,
    pub hold_max: Duration,
    /// One attempt at one endpoint before the client tries the next.
    pub attempt_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            lock_clients: 12,
            keys: (1..=6).map(|i| format!("k{i}")).collect(),
            election_clients: 3,
            names: vec!["svc/leader".into()],
            ttl: Duration::from_millis(1200),
            wait: Duration::from_millis(1500),
            hold_min: Duration::from_millis(5),
            hold_max: Duration::from_millis(60),
            attempt_timeout: Duration::from_millis(600),
        }
    }
}

/// A stop signal shared by the workers (a watch, to avoid another dependency).
mod tokio_util_free {
    use tokio::sync::watch;

    #[derive(Clone)]
    pub struct Stop(watch::Receiver<bool>);

    pub fn stop_pair() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    impl Stop {
        pub fn is_set(&self) -> bool {
            *self.0.borrow()
        }

        pub async fn wait(&mut self) {
            let _ = self.0.wait_for(|s| *s).await;
        }
    }
}

pub struct Workload {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub history: Arc<History>,
}

impl Workload {
    /// Start the workers; `client_for(i)` gives worker `i` its client.
    pub fn start(opts: WorkloadOptions, client_for: impl Fn(usize) -> Client) -> Self {
        let (stop_tx, stop) = tokio_util_free::stop_pair();
        let history = Arc::new(History::default());
        let mut tasks = Vec::new();
        for i in 0..opts.lock_clients {
            let (c, o, h, s) = (client_for(i), opts.clone(), history.clone(), stop.clone());
            tasks.push(tokio::spawn(lock_worker(i, c, o, h, s)));
        }
        for j in 0..opts.election_clients {
            let i = opts.lock_clients + j;
            let (c, o, h, s) = (client_for(i), opts.clone(), history.clone(), stop.clone());
            tasks.push(tokio::spawn(election_worker(i, c, o, h, s)));
        }
        Workload {
            stop: stop_tx,
            tasks,
            history,
        }
    }

    /// Stop the workers (each finishes or abandons its current step) and return the history.
    pub async fn stop(self) -> Arc<History> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.history
    }
}

fn documented(e: &GuardError) -> Option<String> {
    match e {
        GuardError::Api(e) => {
            let ok = matches!(
                e.code,
                ErrorCode::LockHeld
                    | ErrorCode::NameTaken
                    | ErrorCode::Unavailable
                    | ErrorCode::Timeout
                    | ErrorCode::LeaseNotFound
                    | ErrorCode::NotOwner
                    | ErrorCode::TooManyRequests
            );
            Some(if ok {
                e.code.as_str().to_string()
            } else {
                format!("UNDOCUMENTED {}: {}", e.code.as_str(), e.message)
            })
        }
        GuardError::Lost(_) => Some("lost_while_reanchoring".into()),
        GuardError::Options(m) => Some(format!("UNDOCUMENTED options: {m}")),
    }
}

async fn hold_and_record(
    client_id: usize,
    key: String,
    guard: LockGuard<Client>,
    hold_for: Duration,
    history: &History,
    stop: &mut Stop,
) {
    let start = Instant::now();
    let lost = guard.lost();
    let (token, lease) = (guard.token(), guard.lease_id());
    tokio::select! {
        reason = lost => {
            // Believed until the client deadline at most (it may notice a bit later).
            let noticed = Instant::now();
            let end = noticed.min(guard.valid_until());
            history.losses.fetch_add(1, Ordering::Relaxed);
            history.record(Hold { key, client: client_id, token, lease, start, end, lost: Some(reason.to_string()), noticed: Some(noticed) });
        }
        _ = tokio::time::sleep(hold_for) => {
            // The client stops believing the moment it decides to release.
            let end = Instant::now().min(guard.valid_until());
            history.record(Hold { key, client: client_id, token, lease, start, end, lost: None, noticed: None });
            history.releases.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(5), guard.release()).await;
        }
        _ = stop.wait() => {
            let end = Instant::now().min(guard.valid_until());
            history.record(Hold { key, client: client_id, token, lease, start, end, lost: None, noticed: None });
            let _ = tokio::time::timeout(Duration::from_secs(5), guard.release()).await;
        }
    }
}

async fn lock_worker(
    id: usize,
    client: Client,
    opts: WorkloadOptions,
    history: Arc<History>,
    mut stop: Stop,
) {
    let mut dice = Dice::new(id as u64 + 1);
    let deadline = opts.wait + Duration::from_secs(20);
    while !stop.is_set() {
        let key = opts.keys[dice.below(opts.keys.len() as u64) as usize].clone();
        history.attempts.fetch_add(1, Ordering::Relaxed);
        let acquire = Lock::new(&client, &key)
            .owner(format!("w{id}"))
            .ttl(opts.ttl)
            .wait(opts.wait)
            .acquire();
        match tokio::time::timeout(deadline, acquire).await {
            Err(_) => {
                history.hung.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                if let Some(code) = documented(&e) {
                    history.fail(&code);
                }
                tokio::time::sleep(Duration::from_millis(10 + dice.below(40))).await;
            }
            Ok(Ok(guard)) => {
                let hold_for = dice.between(opts.hold_min, opts.hold_max);
                hold_and_record(id, key, guard, hold_for, &history, &mut stop).await;
            }
        }
    }
}

async fn election_worker(
    id: usize,
    client: Client,
    opts: WorkloadOptions,
    history: Arc<History>,
    mut stop: Stop,
) {
    let mut dice = Dice::new(1000 + id as u64);
    while !stop.is_set() && !opts.names.is_empty() {
        let name = opts.names[dice.below(opts.names.len() as u64) as usize].clone();
        history.attempts.fetch_add(1, Ordering::Relaxed);
        let campaign = Election::new(&client, &name, format!("candidate-{id}"))
            .owner(format!("e{id}"))
            .ttl(opts.ttl)
            .wait(opts.wait)
            .campaign();
        let elected = tokio::select! {
            r = tokio::time::timeout(opts.wait + Duration::from_secs(30), campaign) => r,
            _ = stop.wait() => return,
        };
        match elected {
            Err(_) => {
                history.hung.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                if let Some(code) = documented(&e) {
                    history.fail(&code);
                }
                tokio::time::sleep(Duration::from_millis(20 + dice.below(50))).await;
            }
            Ok(Ok(guard)) => {
                let hold_for = dice.between(opts.hold_min * 2, opts.hold_max * 3);
                hold_and_record(
                    id,
                    format!("name:{name}"),
                    guard,
                    hold_for,
                    &history,
                    &mut stop,
                )
                .await;
            }
        }
    }
}

/// The checker's verdict.
#[derive(Debug, Default)]
pub struct Report {
    pub operations: u64,
    pub holds: u64,
    pub handoffs: u64,
    pub losses: u64,
    pub violations: Vec<String>,
}

/// Check a history: mutual exclusion of believed holds, token order, no hung waiter,
/// only documented errors.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        operations: history.attempts.load(Ordering::Relaxed)
            + history.releases.load(Ordering::Relaxed),
        losses: history.losses.load(Ordering::Relaxed),
        ..Report::default()
    };
    let mut by_key: BTreeMap<String, Vec<Hold>> = BTreeMap::new();
    for hold in history.holds() {
        by_key.entry(hold.key.clone()).or_default().push(hold);
    }
    for (key, mut holds) in by_key {
        holds.sort_by_key(|h| (h.start, h.token));
        report.holds += holds.len() as u64;
        let mut previous: Option<Hold> = None;
        for hold in holds {
            if let Some(prev) = &previous {
                if hold.start < prev.end {
                    // Times relative to the earlier hold's start.
                    let base = prev.start;
                    report.violations.push(format!(
                        "{key}: client {} (token {}) believed it held from {:?} while client {} (token {}) believed it held until {:?} ({:?} overlap)\n  earlier: {}\n  later:   {}",
                        hold.client,
                        hold.token,
                        hold.start,
                        prev.client,
                        prev.token,
                        prev.end,
                        prev.end - hold.start,
                        prev.describe(base),
                        hold.describe(base),
                    ));
                }
                if hold.token <= prev.token {
                    report.violations.push(format!(
                        "{key}: token {} granted after token {} (tokens must increase)",
                        hold.token, prev.token
                    ));
                }
                if hold.client != prev.client || hold.token != prev.token {
                    report.handoffs += 1;
                }
            }
            let keep_later_end = previous.as_ref().is_some_and(|p| p.end > hold.end);
            if !keep_later_end {
                previous = Some(hold);
            }
        }
    }
    let hung = history.hung.load(Ordering::Relaxed);
    if hung > 0 {
        report.violations.push(format!(
            "{hung} acquires neither granted nor failed within their deadline"
        ));
    }
    for (code, n) in history.failures() {
        if code.starts_with("UNDOCUMENTED") {
            report.violations.push(format!("{n} × {code}"));
        }
    }
    report
}

impl Report {
    /// Fail the test on any violation, or when the workload made no progress.
    pub fn assert_clean(&self, summary: &str) {
        assert!(
            self.violations.is_empty(),
            "{summary}: {:#?}",
            self.violations
        );
        assert!(
            self.handoffs > 0,
            "{summary}: the workload made no progress"
        );
    }

    pub fn summary(&self, scenario: &str, faults: u64) -> String {
        format!(
            "{scenario}: operations {}, holds {}, handoffs {}, losses {}, faults injected {faults}, violations {}",
            self.operations,
            self.holds,
            self.handoffs,
            self.losses,
            self.violations.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(
        key: &str,
        client: usize,
        token: u64,
        start_ms: u64,
        end_ms: u64,
        base: Instant,
    ) -> Hold {
        Hold {
            key: key.into(),
            client,
            token,
            lease: token,
            start: base + Duration::from_millis(start_ms),
            end: base + Duration::from_millis(end_ms),
            lost: None,
            noticed: None,
        }
    }

    #[test]
    fn the_checker_finds_overlaps_and_token_regressions() {
        let base = Instant::now();
        let h = History::default();
        h.record(hold("k", 1, 1, 0, 100, base));
        h.record(hold("k", 2, 2, 100, 200, base));
        h.record(hold("j", 1, 3, 0, 500, base));
        assert!(check(&h).violations.is_empty());
        assert_eq!(check(&h).handoffs, 1);

        h.record(hold("k", 3, 4, 150, 250, base)); // overlaps client 2
        let r = check(&h);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("overlap"));

        let g = History::default();
        g.record(hold("k", 1, 5, 0, 100, base));
        g.record(hold("k", 2, 4, 200, 300, base)); // older token later
        assert!(check(&g).violations[0].contains("tokens must increase"));

        let f = History::default();
        f.hung.fetch_add(1, Ordering::Relaxed);
        f.fail("UNDOCUMENTED internal: boom");
        assert_eq!(check(&f).violations.len(), 2);
    }
}
