//! The independent checker: each object of the checked workload's history
//! (`leasehold_cluster_tests::linear`) against a sequential specification, with
//! todc-utils' Wing & Gong / Lowe linearizability checker, which shares no code and no
//! rules with the server or with `chaos::check`.
//!
//! - A lock ([`LockSpec`]): the state is the holder `(owner, token)` or none, and the last
//!   token granted. An acquire is granted (free, and a token above every earlier one) or
//!   refused as held (held); a release is released (the named hold is the holder) or
//!   `not_owner` (it is not); a read returns the holder.
//! - A name: todc-utils' own register specification; registering or proclaiming writes
//!   the value, a read returns it (`None`: not registered).
//!
//! todc-utils answers only yes or no, so a history that is not linearizable is written to
//! a file (one operation a line, times in ms from the history's start) named in the
//! failure.

use std::time::{Duration, Instant};

use leasehold_cluster_tests::linear::{Call, LinearHistory, Op};
use todc_utils::specifications::register::{RegisterOperation, RegisterSpecification};
use todc_utils::{Action, History, Specification, WGLChecker};

/// An operation on a lock, with its outcome.
#[derive(Debug, Clone)]
pub enum LockOp {
    Acquire {
        owner: String,
        granted: Option<u64>,
    },
    Release {
        owner: String,
        token: u64,
        released: bool,
    },
    Read(Option<(String, u64)>),
}

/// A lock's state: its holder and the last token granted on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LockModel {
    pub holder: Option<(String, u64)>,
    pub last_token: u64,
}

pub struct LockSpec;

impl Specification for LockSpec {
    type State = LockModel;
    type Operation = LockOp;

    fn init() -> LockModel {
        LockModel::default()
    }

    fn apply(op: &LockOp, state: &LockModel) -> (bool, LockModel) {
        let unchanged = |valid: bool| (valid, state.clone());
        match op {
            LockOp::Acquire {
                owner,
                granted: Some(token),
            } => {
                if state.holder.is_some() || *token <= state.last_token {
                    return unchanged(false);
                }
                let next = LockModel {
                    holder: Some((owner.clone(), *token)),
                    last_token: *token,
                };
                (true, next)
            }
            LockOp::Acquire { granted: None, .. } => unchanged(state.holder.is_some()),
            LockOp::Release {
                owner,
                token,
                released,
            } => {
                let holds = state
                    .holder
                    .as_ref()
                    .is_some_and(|(o, t)| o == owner && t == token);
                match (released, holds) {
                    (true, true) => {
                        let next = LockModel {
                            holder: None,
                            last_token: state.last_token,
                        };
                        (true, next)
                    }
                    (true, false) => unchanged(false),
                    (false, holds) => unchanged(!holds),
                }
            }
            LockOp::Read(holder) => unchanged(*holder == state.holder),
        }
    }
}

type NameSpec = RegisterSpecification<Option<String>>;

/// The verdict on a whole history.
#[derive(Debug, Default)]
pub struct Verdict {
    pub objects: usize,
    pub operations: usize,
    pub reads_dropped: u64,
    pub elapsed: Duration,
    /// One line per object that is not linearizable, naming the file with its history.
    pub violations: Vec<String>,
    /// Why the history is incomplete or may hold an unrecorded expiry (fails the run).
    pub stuck: Vec<String>,
}

impl Verdict {
    /// Fail the test on an object that is not linearizable, an incomplete history, or
    /// no operation at all.
    pub fn assert_clean(&self, summary: &str) {
        assert!(
            self.violations.is_empty() && self.stuck.is_empty(),
            "{summary}: {:#?} {:#?}",
            self.violations,
            self.stuck
        );
        assert!(
            self.operations > 0,
            "{summary}: the checked workload made no progress"
        );
    }

    pub fn summary(&self) -> String {
        format!(
            "linearizability (todc-utils): {} objects, {} operations ({} failed reads left out), checked in {:?}, {} not linearizable, {} incomplete",
            self.objects,
            self.operations,
            self.reads_dropped,
            self.elapsed,
            self.violations.len(),
            self.stuck.len()
        )
    }
}

/// The actions of `ops` in time order (a call before a response at the same instant, so
/// touching operations count as concurrent), as todc-utils wants them. Every operation is
/// complete; the call carries the same operation as the response (the checker applies
/// the response's).
pub fn actions<T: Clone>(ops: &[Op], convert: impl Fn(&Call) -> T) -> Vec<(usize, Action<T>)> {
    let mut events: Vec<(Instant, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, 0, i));
        events.push((op.complete, 1, i));
    }
    events.sort();
    events
        .into_iter()
        .map(|(_, kind, i)| {
            let op = convert(&ops[i].call);
            let action = match kind {
                0 => Action::Call(op),
                _ => Action::Response(op),
            };
            (ops[i].process, action)
        })
        .collect()
}

fn lock_op(call: &Call) -> LockOp {
    match call {
        Call::Acquire { owner, granted } => LockOp::Acquire {
            owner: owner.clone(),
            granted: *granted,
        },
        Call::Release {
            owner,
            token,
            released,
        } => LockOp::Release {
            owner: owner.clone(),
            token: *token,
            released: *released,
        },
        Call::ReadLock { holder } => LockOp::Read(holder.clone()),
        other => panic!("not a lock operation: {other:?}"),
    }
}

fn name_op(call: &Call) -> RegisterOperation<Option<String>> {
    match call {
        Call::Proclaim { value } => RegisterOperation::Write(Some(value.clone())),
        Call::ReadName { value } => RegisterOperation::Read(Some(value.clone())),
        other => panic!("not a name operation: {other:?}"),
    }
}

/// Whether one object's operations are linearizable.
pub fn linearizable(object: &str, ops: &[Op]) -> bool {
    if ops.is_empty() {
        return true;
    }
    if object.starts_with("name:") {
        WGLChecker::<NameSpec>::is_linearizable(History::from_actions(actions(ops, name_op)))
    } else {
        WGLChecker::<LockSpec>::is_linearizable(History::from_actions(actions(ops, lock_op)))
    }
}

/// Check every object of `history`; `label` names the scenario in failure files.
pub fn check(history: &LinearHistory, label: &str) -> Verdict {
    let started = Instant::now();
    let mut verdict = Verdict {
        reads_dropped: history
            .reads_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        stuck: history.stuck(),
        ..Verdict::default()
    };
    for (object, ops) in history.objects() {
        verdict.objects += 1;
        verdict.operations += ops.len();
        if !linearizable(&object, &ops) {
            let file = write_history(label, &object, &ops);
            verdict.violations.push(format!(
                "{object}: {} operations are not linearizable; the history is in {file}",
                ops.len()
            ));
        }
    }
    verdict.elapsed = started.elapsed();
    verdict
}

/// Write `ops` to a file under the system temp directory, one per line in invoke order;
/// return its path.
fn write_history(label: &str, object: &str, ops: &[Op]) -> String {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|op| (op.invoke, op.complete));
    let base = ops.first().map_or_else(Instant::now, |op| op.invoke);
    let ms = |t: Instant| (t - base).as_secs_f64() * 1e3;
    let mut text = format!(
        "# {label}: {object}, {} operations, not linearizable (todc-utils WGLChecker)\n\
         # invoke_ms complete_ms process attempts operation | client\n",
        ops.len()
    );
    for op in &ops {
        text.push_str(&format!(
            "{:10.3} {:10.3} p{:<3} x{} {:?} | {}\n",
            ms(op.invoke),
            ms(op.complete),
            op.process,
            op.attempts,
            op.call,
            op.client
        ));
    }
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    let dir = std::env::temp_dir().join("leasehold-lincheck");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "{}-{}-{}.txt",
        safe(label),
        safe(object),
        std::process::id()
    ));
    match std::fs::write(&path, text) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(could not write {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(process, invoke ms, complete ms, call)` from a common base.
    fn ops(spec: &[(usize, u64, u64, Call)]) -> Vec<Op> {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        spec.iter()
            .map(|(process, from, to, call)| Op {
                process: *process,
                client: format!("p{process}"),
                invoke: at(*from),
                complete: at(*to),
                attempts: 1,
                call: call.clone(),
            })
            .collect()
    }

    fn acquire(owner: &str, granted: Option<u64>) -> Call {
        Call::Acquire {
            owner: owner.into(),
            granted,
        }
    }

    fn release(owner: &str, token: u64, released: bool) -> Call {
        Call::Release {
            owner: owner.into(),
            token,
            released,
        }
    }

    fn read(holder: Option<(&str, u64)>) -> Call {
        Call::ReadLock {
            holder: holder.map(|(o, t)| (o.into(), t)),
        }
    }

    #[test]
    fn a_linearizable_lock_history_passes() {
        let h = ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (2, 5, 12, acquire("b", None)),
            // Concurrent with the release: either answer is fine.
            (3, 20, 40, read(None)),
            (1, 25, 35, release("a", 5, true)),
            (2, 45, 50, acquire("b", Some(9))),
            (3, 55, 60, read(Some(("b", 9)))),
            (1, 61, 62, release("a", 5, false)),
            (2, 70, 80, release("b", 9, true)),
        ]);
        assert!(linearizable("lock:k", &h));
    }

    #[test]
    fn a_stale_read_fails() {
        // The release completed before the read began, yet the read saw the holder.
        let h = ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (1, 20, 30, release("a", 5, true)),
            (2, 40, 45, read(Some(("a", 5)))),
        ]);
        assert!(!linearizable("lock:k", &h));
    }

    #[test]
    fn a_double_grant_and_a_token_regression_fail() {
        let double = ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (2, 20, 30, acquire("b", Some(6))),
        ]);
        assert!(!linearizable("lock:k", &double));
        let regression = ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (1, 20, 30, release("a", 5, true)),
            (2, 40, 50, acquire("b", Some(4))),
        ]);
        assert!(!linearizable("lock:k", &regression));
        // A refusal while free, and a release of a hold that is not the holder, fail too.
        let refused = ops(&[(1, 0, 10, acquire("a", None))]);
        assert!(!linearizable("lock:k", &refused));
        let wrong = ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (2, 20, 30, release("b", 5, true)),
        ]);
        assert!(!linearizable("lock:k", &wrong));
    }

    #[test]
    fn names_follow_the_register_specification() {
        let w = |v: &str| Call::Proclaim { value: v.into() };
        let r = |v: Option<&str>| Call::ReadName {
            value: v.map(Into::into),
        };
        let flip = ops(&[
            (2, 0, 5, r(None)),
            (1, 3, 10, w("0")),
            (2, 11, 12, r(Some("0"))),
            (1, 20, 30, w("1")),
            (3, 21, 22, r(Some("1"))),
            (2, 23, 24, r(Some("0"))),
            (2, 31, 32, r(Some("1"))),
        ]);
        // The reads concurrent with writing "1" saw "1" then "0": not linearizable.
        assert!(!linearizable("name:n", &flip));
        let fine = ops(&[
            (2, 0, 5, r(None)),
            (1, 3, 10, w("0")),
            (2, 11, 12, r(Some("0"))),
            (1, 20, 30, w("1")),
            (2, 23, 24, r(Some("0"))),
            (3, 25, 26, r(Some("1"))),
            (2, 31, 32, r(Some("1"))),
        ]);
        assert!(linearizable("name:n", &fine));
        let stale = ops(&[
            (1, 0, 10, w("0")),
            (1, 20, 30, w("1")),
            (2, 40, 41, r(Some("0"))),
        ]);
        assert!(!linearizable("name:n", &stale));
    }

    #[test]
    fn a_failed_check_writes_the_history_to_a_file() {
        let h = LinearHistory::default();
        for op in ops(&[
            (1, 0, 10, acquire("a", Some(5))),
            (2, 20, 30, acquire("b", Some(6))),
        ]) {
            h.record("lock:k", op);
        }
        let verdict = check(&h, "unit test");
        assert_eq!(verdict.violations.len(), 1, "{verdict:?}");
        let path = verdict.violations[0]
            .rsplit("history is in ")
            .next()
            .unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("granted: Some(6)"), "{text}");
        std::fs::remove_file(path).unwrap();
    }

    /// A history the size of one generation of a key (2,000 operations) checks quickly.
    #[test]
    fn a_long_history_checks_quickly() {
        let mut spec = Vec::new();
        let mut t = 0;
        for i in 0..500u64 {
            let owner = format!("w{}", i % 3);
            let token = i + 1;
            spec.push((i as usize % 3, t, t + 4, acquire(&owner, Some(token))));
            spec.push((3, t + 2, t + 6, read(Some((owner.as_str(), token)))));
            spec.push((4 + i as usize % 2, t + 1, t + 3, acquire("x", None)));
            spec.push((i as usize % 3, t + 7, t + 9, release(&owner, token, true)));
            t += 10;
        }
        let started = Instant::now();
        assert!(linearizable("lock:k", &ops(&spec)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
