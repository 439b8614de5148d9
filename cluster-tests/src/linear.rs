//! The checked workload: raw API operations, each recorded with its invoke and completion
//! time, for an independent linearizability check of every chaos history
//! (`tests/support/lincheck.rs`, todc-utils' Wing & Gong / Lowe checker; docs/faults.md).
//!
//! It runs beside the guard workload of [`crate::chaos`], on keys and names of its own
//! (`lin/k1-g0`, ...: every [`LinearOptions::generation`] the workers move to fresh ones,
//! so each object's history stays short enough to search). Per key, a few lockers (clients failing over between all nodes) acquire
//! with no wait (granted with a token, or refused as held), read the holder, and release
//! what they got (released, or `not_owner`); readers pinned to one node each read the
//! holder with linearizable reads. Per name, one proclaimer registers it and proclaims
//! new values; pinned readers read the value.
//!
//! The checker needs a definite outcome for every operation, so a mutation is retried with
//! the same `request_id` (answered from the dedupe window, SPEC §3) until its answer is
//! known; one still unknown after [`LinearOptions::op_deadline`] fails the run
//! ([`LinearHistory::stuck`]). A read that fails changed nothing and is left out. Leases
//! live for [`LinearOptions::ttl`] (a minute), far past any fault and any hold here, so no
//! expiry, which no client operation would record, happens inside the checked history;
//! the proclaimer keeps its name's lease alive, and losing it fails the run too.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold_api::error::ApiError;
use leasehold_api::wire::RegisterRequest;
use leasehold_api::wire::{AcquireRequest, NameRecord, ProclaimRequest, ReadParams};
use leasehold_api::wire::{ReleaseParams, ReleaseResponse};
use leasehold_api::{Client, ErrorCode, LeaseService};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What an operation asked and what it was answered (a complete operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A lock acquire with no wait: granted with this token, or `None`: refused as held.
    Acquire { owner: String, granted: Option<u64> },
    /// A release of the hold `(owner, token)`: released, or refused as `not_owner`.
    Release {
        owner: String,
        token: u64,
        released: bool,
    },
    /// A linearizable read of a lock's holder.
    ReadLock { holder: Option<(String, u64)> },
    /// A name registered with, or proclaimed to, this value.
    Proclaim { value: String },
    /// A linearizable read of a name's value (`None`: not registered).
    ReadName { value: Option<String> },
}

/// One operation of one process (a worker: its operations never overlap).
#[derive(Debug, Clone)]
pub struct Op {
    pub process: usize,
    /// Who ran it, for the failure file ("locker 2 (from node 1, failing over)").
    pub client: String,
    pub invoke: Instant,
    pub complete: Instant,
    /// Tries with the same `request_id` until the outcome was known.
    pub attempts: u32,
    pub call: Call,
}

/// What the checked workload did: per object (`lock:KEY`, `name:NAME`), its operations.
#[derive(Default)]
pub struct LinearHistory {
    ops: Mutex<BTreeMap<String, Vec<Op>>>,
    stuck: Mutex<Vec<String>>,
    /// Reads that failed (during a fault): they changed nothing and are not in the history.
    pub reads_dropped: AtomicU64,
}

impl LinearHistory {
    pub fn record(&self, object: &str, op: Op) {
        let mut ops = self.ops.lock().expect("history lock");
        ops.entry(object.to_string()).or_default().push(op);
    }

    fn fail(&self, what: String) {
        self.stuck.lock().expect("history lock").push(what);
    }

    /// Every object's operations.
    pub fn objects(&self) -> BTreeMap<String, Vec<Op>> {
        self.ops.lock().expect("history lock").clone()
    }

    pub fn operations(&self) -> usize {
        let ops = self.ops.lock().expect("history lock");
        ops.values().map(Vec::len).sum()
    }

    /// What kept the history from being complete and expiry-free: a mutation whose outcome
    /// stayed unknown past its deadline, a name lease lost. Each fails the run.
    pub fn stuck(&self) -> Vec<String> {
        self.stuck.lock().expect("history lock").clone()
    }
}

#[derive(Debug, Clone)]
pub struct LinearOptions {
    pub keys: Vec<String>,
    pub lockers_per_key: usize,
    pub names: Vec<String>,
    pub ttl: Duration,
    /// A worker's pause between operations (drawn between the two).
    pub pause: (Duration, Duration),
    /// How long a mutation is retried before the run fails: well inside the dedupe window
    /// (an id is remembered at least 60 s) and the TTL, so a late answer is still the
    /// first one.
    pub op_deadline: Duration,
    /// Every `generation` the workers move to fresh keys and names (`lin/k1-g3`): each
    /// generation is an object of its own, so each history the checker searches stays
    /// short however long the run (the soak) lasts.
    pub generation: Duration,
}

impl Default for LinearOptions {
    fn default() -> Self {
        LinearOptions {
            keys: vec!["lin/k1".into(), "lin/k2".into()],
            lockers_per_key: 3,
            names: vec!["lin/n1".into()],
            ttl: Duration::from_secs(60),
            pause: (Duration::from_millis(20), Duration::from_millis(80)),
            op_deadline: Duration::from_secs(20),
            generation: Duration::from_secs(10),
        }
    }
}

/// The workload's clients: `roaming[i]` starts at node `i` and fails over between all;
/// `pinned[i]` speaks to node `i` only.
pub struct Clients {
    pub roaming: Vec<Client>,
    pub pinned: Vec<Client>,
}

pub struct LinearWorkload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub history: Arc<LinearHistory>,
}

/// What every worker gets.
#[derive(Clone)]
struct Ctx {
    process: usize,
    label: String,
    client: Client,
    opts: LinearOptions,
    history: Arc<LinearHistory>,
    stop: watch::Receiver<bool>,
    started: Instant,
}

impl Ctx {
    /// The key or name of the current generation.
    fn current(&self, base: &str) -> String {
        let gen = self.started.elapsed().as_millis() / self.opts.generation.as_millis().max(1);
        format!("{base}-g{gen}")
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    async fn pause(&self, dice: &mut u64) {
        let (lo, hi) = self.opts.pause;
        let span = hi.saturating_sub(lo).as_millis() as u64 + 1;
        *dice ^= *dice << 13;
        *dice ^= *dice >> 7;
        *dice ^= *dice << 17;
        tokio::time::sleep(lo + Duration::from_millis(*dice % span)).await;
    }

    fn op(&self, invoke: Instant, attempts: u32, call: Call) -> Op {
        Op {
            process: self.process,
            client: self.label.clone(),
            invoke,
            complete: Instant::now(),
            attempts,
            call,
        }
    }

    /// Run `attempt` (which carries one `request_id`) until it succeeds or fails with an
    /// error `definite` accepts; then the outcome and the number of tries. `None` (and the
    /// run failed) if the outcome is still unknown at the deadline.
    async fn until_known<T, F, Fut>(
        &self,
        what: &str,
        definite: impl Fn(&ApiError) -> bool,
        mut attempt: F,
    ) -> Option<(Result<T, ApiError>, u32)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Ok(v) => return Some((Ok(v), tries)),
                Err(e) if definite(&e) => return Some((Err(e), tries)),
                Err(e) if started.elapsed() >= self.opts.op_deadline => {
                    self.history.fail(format!(
                        "{}: {what}: outcome still unknown after {tries} tries in {:?}: {} {}",
                        self.label,
                        started.elapsed(),
                        e.code.as_str(),
                        e.message
                    ));
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl LinearWorkload {
    /// Start on `cluster`: clients failing over from every node, readers pinned to each.
    pub fn on(cluster: &crate::procs::ProcCluster, opts: LinearOptions) -> Self {
        let attempt = Duration::from_millis(600);
        let n = cluster.nodes.len();
        let clients = Clients {
            roaming: (0..n).map(|i| cluster.client_from(i, attempt)).collect(),
            pinned: (0..n).map(|i| cluster.client_pinned(i, attempt)).collect(),
        };
        LinearWorkload::start(opts, clients)
    }

    pub fn start(opts: LinearOptions, clients: Clients) -> Self {
        let (stop_tx, stop) = watch::channel(false);
        let history = Arc::new(LinearHistory::default());
        let mut tasks = Vec::new();
        let mut process = 0;
        let started = Instant::now();
        let mut ctx = |label: String, client: &Client| {
            process += 1;
            Ctx {
                process,
                label,
                client: client.clone(),
                opts: opts.clone(),
                history: history.clone(),
                stop: stop.clone(),
                started,
            }
        };
        let n = clients.roaming.len();
        for key in &opts.keys {
            for j in 0..opts.lockers_per_key {
                let label = format!("locker {j} of {key} (from node {}, failing over)", j % n);
                let c = ctx(label, &clients.roaming[j % n]);
                tasks.push(tokio::spawn(locker(c, key.clone())));
            }
            for (i, client) in clients.pinned.iter().enumerate() {
                let c = ctx(format!("reader of {key} pinned to node {i}"), client);
                tasks.push(tokio::spawn(lock_reader(c, key.clone())));
            }
        }
        for (k, name) in opts.names.iter().enumerate() {
            let c = ctx(
                format!("proclaimer of {name} (failing over)"),
                &clients.roaming[k % n],
            );
            tasks.push(tokio::spawn(proclaimer(c, name.clone())));
            for (i, client) in clients.pinned.iter().enumerate() {
                let c = ctx(format!("reader of {name} pinned to node {i}"), client);
                tasks.push(tokio::spawn(name_reader(c, name.clone())));
            }
        }
        LinearWorkload {
            stop: stop_tx,
            tasks,
            history,
        }
    }

    /// Stop the workers (each completes its current operation, and releases what it
    /// holds) and return the history.
    pub async fn stop(self) -> Arc<LinearHistory> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
        self.history
    }
}

/// A worker's dice (xorshift, never zero).
fn seed(process: usize, salt: u64) -> u64 {
    (process as u64).wrapping_mul(salt) | 1
}

fn code_is(codes: &'static [ErrorCode]) -> impl Fn(&ApiError) -> bool {
    move |e| codes.contains(&e.code)
}

async fn locker(ctx: Ctx, base: String) {
    let owner = format!("lin{}", ctx.process);
    let mut dice = seed(ctx.process, 0x9E37_79B9);
    while !ctx.stopped() {
        let key = ctx.current(&base);
        let object = format!("lock:{key}");
        let invoke = Instant::now();
        let req = AcquireRequest {
            owner: owner.clone(),
            ttl_ms: Some(ctx.opts.ttl.as_millis() as u64),
            wait_ms: Some(0),
            lock_delay_ms: Some(0),
            request_id: Some(ctx.client.new_request_id()),
            ..Default::default()
        };
        let definite = code_is(&[ErrorCode::LockHeld]);
        let attempt = || ctx.client.acquire_lock(&key, req.clone());
        let Some((outcome, tries)) = ctx.until_known("acquire", definite, attempt).await else {
            return;
        };
        let granted = outcome.ok().map(|h| h.token);
        let call = Call::Acquire {
            owner: owner.clone(),
            granted,
        };
        ctx.history.record(&object, ctx.op(invoke, tries, call));
        if dice & 1 == 0 {
            read_lock(&ctx, &key, &object).await;
        }
        ctx.pause(&mut dice).await;
        if let Some(token) = granted {
            let invoke = Instant::now();
            let params = ReleaseParams {
                owner: owner.clone(),
                token,
                force: None,
                request_id: Some(ctx.client.new_request_id()),
            };
            let definite = code_is(&[ErrorCode::NotOwner]);
            let attempt = || ctx.client.release_lock(&key, params.clone());
            let Some((outcome, tries)) = ctx.until_known("release", definite, attempt).await else {
                return;
            };
            let released = outcome.is_ok_and(|r: ReleaseResponse| r.released);
            let call = Call::Release {
                owner: owner.clone(),
                token,
                released,
            };
            ctx.history.record(&object, ctx.op(invoke, tries, call));
            ctx.pause(&mut dice).await;
        }
    }
}

/// One linearizable read of a lock's holder; a failed read is left out (false).
async fn read_lock(ctx: &Ctx, key: &str, object: &str) -> bool {
    let invoke = Instant::now();
    let holder = match ctx.client.get_lock(key, ReadParams::default()).await {
        Ok(state) => state.holder.map(|h| (h.owner, h.token)),
        Err(e) if e.code == ErrorCode::NotFound => None,
        Err(_) => {
            ctx.history.reads_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    let call = Call::ReadLock { holder };
    ctx.history.record(object, ctx.op(invoke, 1, call));
    true
}

/// After a failed read (its node is down or cut off), wait longer before the next.
const READ_BACKOFF: Duration = Duration::from_millis(250);

async fn lock_reader(ctx: Ctx, base: String) {
    let mut dice = seed(ctx.process, 0x2545_F491);
    while !ctx.stopped() {
        let key = ctx.current(&base);
        if !read_lock(&ctx, &key, &format!("lock:{key}")).await {
            tokio::time::sleep(READ_BACKOFF).await;
        }
        ctx.pause(&mut dice).await;
    }
}

async fn name_reader(ctx: Ctx, base: String) {
    let mut dice = seed(ctx.process, 0x2545_F491);
    while !ctx.stopped() {
        let name = ctx.current(&base);
        let object = format!("name:{name}");
        let invoke = Instant::now();
        let value = match ctx.client.get_name(&name, ReadParams::default()).await {
            Ok(state) => Some(state.record.and_then(|r| r.value)),
            Err(e) if e.code == ErrorCode::NameNotFound => Some(None),
            Err(_) => None,
        };
        match value {
            Some(value) => {
                let call = Call::ReadName { value };
                ctx.history.record(&object, ctx.op(invoke, 1, call));
            }
            None => {
                ctx.history.reads_dropped.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(READ_BACKOFF).await;
            }
        }
        ctx.pause(&mut dice).await;
    }
}

/// Per generation: register the name (value "0"), then proclaim 1, 2, 3, ... keeping the
/// name's lease alive. A name of an earlier generation is left to expire, unread.
async fn proclaimer(ctx: Ctx, base: String) {
    let owner = format!("lin{}", ctx.process);
    let mut dice = seed(ctx.process, 0x9E37_79B9);
    let mut current: Option<(String, NameRecord, Instant)> = None;
    let mut n = 0u64;
    while !ctx.stopped() {
        let name = ctx.current(&base);
        let registered = current.as_ref().is_some_and(|(held, ..)| *held == name);
        let (value, outcome) = if registered {
            let (_, record, renewed) = current.as_mut().expect("registered");
            if renewed.elapsed() > ctx.opts.ttl / 10 {
                let keepalive = || ctx.client.keepalive(record.lease_id);
                let definite = code_is(&[ErrorCode::LeaseNotFound]);
                match ctx.until_known("keepalive", definite, keepalive).await {
                    Some((Ok(_), _)) => *renewed = Instant::now(),
                    Some((Err(e), _)) => {
                        let lost =
                            format!("{}: the name's lease was lost: {}", ctx.label, e.message);
                        return ctx.history.fail(lost);
                    }
                    None => return,
                }
            }
            n += 1;
            let invoke = Instant::now();
            let req = ProclaimRequest {
                owner: owner.clone(),
                token: record.token,
                value: Some(n.to_string()),
                request_id: Some(ctx.client.new_request_id()),
            };
            let attempt = || ctx.client.proclaim(&name, req.clone());
            let definite = code_is(&[ErrorCode::NotOwner, ErrorCode::NameNotFound]);
            let outcome = ctx.until_known("proclaim", definite, attempt).await;
            (n.to_string(), outcome.map(|(r, tries)| (r, tries, invoke)))
        } else {
            n = 0;
            let invoke = Instant::now();
            let req = RegisterRequest {
                owner: owner.clone(),
                value: Some("0".into()),
                ttl_ms: Some(ctx.opts.ttl.as_millis() as u64),
                request_id: Some(ctx.client.new_request_id()),
                ..Default::default()
            };
            let attempt = || ctx.client.register_name(&name, req.clone());
            let definite = code_is(&[ErrorCode::NameTaken]);
            let outcome = ctx.until_known("register", definite, attempt).await;
            if let Some((Ok(record), _)) = &outcome {
                current = Some((name.clone(), record.clone(), Instant::now()));
            }
            (
                "0".to_string(),
                outcome.map(|(r, tries)| (r, tries, invoke)),
            )
        };
        let Some((result, tries, invoke)) = outcome else {
            return;
        };
        if let Err(e) = result {
            let lost = format!("{}: {name}: {} {}", ctx.label, e.code.as_str(), e.message);
            return ctx.history.fail(lost);
        }
        let object = format!("name:{name}");
        ctx.history
            .record(&object, ctx.op(invoke, tries, Call::Proclaim { value }));
        ctx.pause(&mut dice).await;
    }
}
