use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::command::{
    Acquire, Batch, BusyReason, Caller, Command, CommandResult, EndReason, HoldView, Kind,
    LeaseSpec, Proposal, ProposalV1, SmError,
};

const MAX_LEASES: u64 = 1_000;
const MAX_WAITERS: u32 = 100;

/// A tiny driver that applies one command per entry, with a clock the test controls.
struct Sm {
    state: LeaseState,
    index: u64,
    /// The term of the entries it applies.
    term: u64,
    now_ms: u64,
    events: Vec<StateEvent>,
}

impl Sm {
    fn new() -> Self {
        Sm {
            state: LeaseState::default(),
            index: 0,
            term: 1,
            now_ms: 1_000,
            events: Vec::new(),
        }
    }

    fn apply_with_id(&mut self, request_id: Option<&str>, command: Command) -> CommandResult {
        self.index += 1;
        let batch = Batch::new(
            self.now_ms,
            vec![Proposal {
                request_id: request_id.map(str::to_string),
                caller: None,
                command,
            }],
        );
        let mut result = self
            .state
            .apply_batch(self.index, self.term, &batch, &mut self.events);
        self.state.check_invariants().expect("invariants hold");
        result.results.pop().expect("one result per proposal")
    }

    fn apply(&mut self, command: Command) -> CommandResult {
        self.apply_with_id(None, command)
    }

    fn apply_as(&mut self, caller: &Caller, command: Command) -> CommandResult {
        self.index += 1;
        let batch = Batch::new(
            self.now_ms,
            vec![Proposal {
                request_id: None,
                caller: Some(caller.clone()),
                command,
            }],
        );
        let mut result = self
            .state
            .apply_batch(self.index, self.term, &batch, &mut self.events);
        self.state.check_invariants().expect("invariants hold");
        result.results.pop().expect("one result per proposal")
    }

    fn acquire(&mut self, key: &str, owner: &str, ttl_ms: u64, wait: bool) -> CommandResult {
        self.apply(Command::Acquire(acquire(
            Kind::Lock,
            key,
            owner,
            LeaseSpec::New { ttl_ms },
            wait,
            1,
        )))
    }
}

fn acquire(
    kind: Kind,
    key: &str,
    owner: &str,
    lease: LeaseSpec,
    wait: bool,
    limit: u32,
) -> Acquire {
    Acquire {
        kind,
        key: key.to_string(),
        owner: owner.to_string(),
        lease,
        wait,
        value: None,
        lock_delay_ms: 0,
        limit,
        max_waiters: MAX_WAITERS,
        max_leases: MAX_LEASES,
    }
}

fn granted(result: CommandResult) -> HoldView {
    match result {
        CommandResult::Granted(hold) => hold,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn holder_of(sm: &Sm, key: &str) -> Option<Hold> {
    sm.state
        .resource(Kind::Lock, key)
        .and_then(|r| r.holders.first().cloned())
}

#[test]
fn acquire_then_busy_then_release_frees_the_key() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    assert_eq!((a.owner.as_str(), a.token, a.acquisitions), ("a", 1, 1));
    match sm.acquire("k", "b", 5_000, false) {
        CommandResult::Busy { holders, reason } => {
            assert_eq!(reason, BusyReason::Held);
            assert_eq!(holders[0].owner, "a");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    // The failed try created no lease.
    assert_eq!(sm.state.lease_count(), 1);
    let wrong = sm.apply(Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "b".into(),
        token: a.token,
    });
    assert_eq!(wrong, CommandResult::Error(SmError::NotOwner));
    let ok = sm.apply(Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: a.token,
    });
    assert_eq!(ok, CommandResult::Released);
    assert!(holder_of(&sm, "k").is_none());
    // The implicit lease ended with its hold.
    assert_eq!(sm.state.lease_count(), 0);
    assert!(sm.events.contains(&StateEvent::LeaseGone {
        lease_id: a.lease_id
    }));
}

#[test]
fn release_hands_the_lock_to_waiters_in_fifo_order_in_the_same_step() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    let CommandResult::Queued { position: 1, .. } = sm.acquire("k", "b", 5_000, true) else {
        panic!("b should queue first");
    };
    let CommandResult::Queued { position: 2, .. } = sm.acquire("k", "c", 5_000, true) else {
        panic!("c should queue second");
    };
    sm.apply(Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: a.token,
    });
    let b = holder_of(&sm, "k").expect("b holds after the release's own commit");
    assert_eq!(b.owner, "b");
    assert!(b.token > a.token);
    let resource = sm.state.resource(Kind::Lock, "k").unwrap();
    assert_eq!(resource.acquisitions, 2);
    assert_eq!(resource.waiters.len(), 1);
    let history: Vec<_> = resource.history.iter().map(|h| h.event).collect();
    assert_eq!(
        history,
        vec![
            HistoryKind::Acquired,
            HistoryKind::Released,
            HistoryKind::Acquired
        ]
    );
}

#[test]
fn expiry_hands_the_lock_on_and_records_it() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    sm.acquire("k", "b", 5_000, true);
    sm.now_ms += 6_000;
    let ended = sm.apply(Command::ExpireLease {
        lease_id: a.lease_id,
    });
    assert_eq!(
        ended,
        CommandResult::LeaseEnded {
            released: vec![(Kind::Lock, "k".to_string())]
        }
    );
    assert_eq!(holder_of(&sm, "k").unwrap().owner, "b");
    let expired: Vec<_> = sm.state.expired_recent(10).collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].owner.as_str(), expired[0].token),
        ("a", a.token)
    );
    let end = sm
        .state
        .resource(Kind::Lock, "k")
        .unwrap()
        .last_end
        .clone()
        .unwrap();
    assert_eq!(end.reason, EndReason::Expired);
    // A second expiry of the same lease is not found (it is gone), never a success.
    assert_eq!(
        sm.apply(Command::ExpireLease {
            lease_id: a.lease_id
        }),
        CommandResult::Error(SmError::LeaseNotFound {
            lease_id: a.lease_id
        })
    );
}

/// An expiry ends the lease only from an entry of the term whose leader saw the deadline
/// pass. A leader that lost leadership and won it back re-armed the lease on its takeover
/// (and keepalives may have renewed it since), so its old term's expiry, reaching the log
/// in the new term, must change nothing.
#[test]
fn an_expiry_appended_in_a_later_term_than_proposed_is_stale() {
    let mut sm = Sm::new();
    sm.term = 3;
    let a = granted(sm.acquire("k", "a", 5_000, false));
    sm.acquire("k", "b", 5_000, true);
    sm.now_ms += 6_000;
    let stale = sm.apply(Command::Expire {
        lease_id: a.lease_id,
        term: 2,
    });
    assert_eq!(stale, CommandResult::StaleExpiry);
    assert_eq!(holder_of(&sm, "k").unwrap().owner, "a", "the holder stays");
    assert!(sm.state.lease(a.lease_id).is_some(), "the lease stays");
    assert_eq!(sm.state.expired_recent(10).count(), 0);
    // The same expiry proposed in the entry's own term ends it.
    let ended = sm.apply(Command::Expire {
        lease_id: a.lease_id,
        term: 3,
    });
    assert_eq!(
        ended,
        CommandResult::LeaseEnded {
            released: vec![(Kind::Lock, "k".to_string())]
        }
    );
    assert_eq!(holder_of(&sm, "k").unwrap().owner, "b");
}

#[test]
fn cancel_wait_removes_the_waiter_and_its_implicit_lease() {
    let mut sm = Sm::new();
    granted(sm.acquire("k", "a", 5_000, false));
    let CommandResult::Queued {
        lease_id,
        implicit_lease: true,
        ..
    } = sm.acquire("k", "b", 5_000, true)
    else {
        panic!("b should queue");
    };
    let r = sm.apply(Command::CancelWait {
        kind: Kind::Lock,
        key: "k".into(),
        lease_id,
    });
    assert_eq!(r, CommandResult::WaitCancelled);
    assert!(sm.state.lease(lease_id).is_none());
    assert!(sm
        .state
        .resource(Kind::Lock, "k")
        .unwrap()
        .waiters
        .is_empty());
}

#[test]
fn cancel_wait_after_the_grant_returns_the_grant() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    let CommandResult::Queued { lease_id, .. } = sm.acquire("k", "b", 5_000, true) else {
        panic!("b should queue");
    };
    sm.apply(Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: a.token,
    });
    let r = sm.apply(Command::CancelWait {
        kind: Kind::Lock,
        key: "k".into(),
        lease_id,
    });
    let hold = granted(r);
    assert_eq!((hold.owner.as_str(), hold.lease_id), ("b", lease_id));
}

#[test]
fn lock_delay_holds_waiters_back_until_it_elapses() {
    let mut sm = Sm::new();
    let mut a = acquire(
        Kind::Lock,
        "k",
        "a",
        LeaseSpec::New { ttl_ms: 1_000 },
        false,
        1,
    );
    a.lock_delay_ms = 2_000;
    let a = granted(sm.apply(Command::Acquire(a)));
    sm.acquire("k", "b", 5_000, true);
    sm.apply(Command::ExpireLease {
        lease_id: a.lease_id,
    });
    assert!(
        holder_of(&sm, "k").is_none(),
        "lock-delay keeps the key free"
    );
    assert!(sm.events.iter().any(
        |e| matches!(e, StateEvent::DelayUntil { until_ms, .. } if *until_ms == sm.now_ms + 2_000)
    ));
    match sm.acquire("k", "c", 5_000, false) {
        CommandResult::Busy { .. } => {}
        other => panic!("expected busy, got {other:?}"),
    }
    sm.now_ms += 1_999;
    sm.apply(Command::Promote {
        kind: Kind::Lock,
        key: "k".into(),
    });
    assert!(holder_of(&sm, "k").is_none());
    sm.now_ms += 1;
    sm.apply(Command::Promote {
        kind: Kind::Lock,
        key: "k".into(),
    });
    assert_eq!(holder_of(&sm, "k").unwrap().owner, "b");
}

#[test]
fn a_release_does_not_impose_lock_delay() {
    let mut sm = Sm::new();
    let mut a = acquire(
        Kind::Lock,
        "k",
        "a",
        LeaseSpec::New { ttl_ms: 1_000 },
        false,
        1,
    );
    a.lock_delay_ms = 2_000;
    let a = granted(sm.apply(Command::Acquire(a)));
    sm.apply(Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: a.token,
    });
    granted(sm.acquire("k", "b", 5_000, false));
}

#[test]
fn request_id_retry_returns_the_original_result() {
    let mut sm = Sm::new();
    let cmd = Command::Acquire(acquire(
        Kind::Lock,
        "k",
        "a",
        LeaseSpec::New { ttl_ms: 5_000 },
        false,
        1,
    ));
    let first = sm.apply_with_id(Some("req-1"), cmd.clone());
    let again = sm.apply_with_id(Some("req-1"), cmd.clone());
    assert_eq!(first, again);
    assert_eq!(
        sm.state.lease_count(),
        1,
        "the retry created no second lease"
    );
    // A different id is a different request.
    assert!(matches!(
        sm.apply_with_id(Some("req-2"), cmd),
        CommandResult::Busy { .. }
    ));
    // Past the window the id is forgotten.
    assert!(sm.state.dedupe.keys().any(|k| k.starts_with("req-1\u{0}")));
    sm.now_ms += DEDUPE_WINDOW_MS + 1;
    sm.apply(Command::Promote {
        kind: Kind::Lock,
        key: "x".into(),
    });
    assert!(!sm.state.dedupe.keys().any(|k| k.starts_with("req-1\u{0}")));
}

/// Entries written before the minimum window existed (`Batch::V2`) keep the rule they were
/// written under, count or age: a replica replaying an old log prunes what the old binary
/// that built another replica's snapshot pruned, so the two cannot diverge.
#[test]
fn old_entries_keep_the_count_rule_of_the_dedupe_window() {
    let mut state = LeaseState::default();
    let mut events = Vec::new();
    let ids = DEDUPE_MAX_ENTRIES + 10;
    for (n, chunk) in (0..ids).collect::<Vec<_>>().chunks(1_000).enumerate() {
        let proposals = chunk
            .iter()
            .map(|i| Proposal {
                request_id: Some(format!("old-{i}")),
                caller: None,
                command: Command::Promote {
                    kind: Kind::Lock,
                    key: "k".into(),
                },
            })
            .collect();
        let batch = Batch::V2 {
            proposed_at_ms: 1_000 + n as u64,
            proposals,
        };
        state.apply_batch(n as u64 + 1, 1, &batch, &mut events);
    }
    assert_eq!(
        state.dedupe.len(),
        DEDUPE_MAX_ENTRIES,
        "V2: count alone bounds it"
    );
}

/// The dedupe window in count and time: at a write rate that brings more than
/// `DEDUPE_MAX_ENTRIES` ids within the minimum window (70,000 ids in 50 s), a retry is
/// still recognised for the whole minimum window; past it, the count bound applies again.
#[test]
fn a_flood_of_request_ids_keeps_an_id_for_the_minimum_window() {
    let mut sm = Sm::new();
    let cmd = Command::Acquire(acquire(
        Kind::Lock,
        "k",
        "a",
        LeaseSpec::New { ttl_ms: 5_000 },
        false,
        1,
    ));
    let first = sm.apply_with_id(Some("the-retried-one"), cmd.clone());
    // DEDUPE_MAX_ENTRIES + 4,464 other ids over 50 s, in entries of 1,000 ids.
    let others = DEDUPE_MAX_ENTRIES + 4_464;
    for (n, chunk) in (0..others).collect::<Vec<_>>().chunks(1_000).enumerate() {
        sm.index += 1;
        sm.now_ms += 50_000 / (others as u64 / 1_000);
        let proposals = chunk
            .iter()
            .map(|i| Proposal {
                request_id: Some(format!("flood-{n}-{i}")),
                caller: None,
                command: Command::Promote {
                    kind: Kind::Lock,
                    key: "elsewhere".into(),
                },
            })
            .collect();
        let batch = Batch::new(sm.now_ms, proposals);
        sm.state
            .apply_batch(sm.index, sm.term, &batch, &mut sm.events);
    }
    assert!(sm.state.dedupe.len() > DEDUPE_MAX_ENTRIES);
    let retried = sm.apply_with_id(Some("the-retried-one"), cmd.clone());
    assert_eq!(
        retried, first,
        "a retry inside the minimum window is answered as before"
    );
    assert_eq!(
        sm.state.lease_count(),
        1,
        "the retry created no second lease"
    );
    // Past the minimum window the count bound prunes the oldest again.
    sm.now_ms += DEDUPE_MIN_WINDOW_MS;
    sm.apply(Command::Promote {
        kind: Kind::Lock,
        key: "x".into(),
    });
    assert!(sm.state.dedupe.len() <= DEDUPE_MAX_ENTRIES + 1);
    assert!(!sm
        .state
        .dedupe
        .keys()
        .any(|k| k.starts_with("the-retried-one\u{0}")));
}

/// An id reused for another operation (or another key) is a new request: it never gets
/// the first one's result (schemathesis found a lease creation's result, under a reused
/// id, answered to a semaphore acquire: a 500).
#[test]
fn a_request_id_reused_for_another_operation_is_a_new_request() {
    let mut sm = Sm::new();
    let created = sm.apply_with_id(
        Some("r"),
        Command::CreateLease {
            ttl_ms: 10_000,
            owner: "o".into(),
            max_leases: 100,
        },
    );
    let CommandResult::LeaseCreated { lease_id, .. } = created else {
        panic!("{created:?}");
    };
    let acquire = |key: &str| {
        Command::Acquire(Acquire {
            kind: Kind::Lock,
            key: key.into(),
            owner: "o".into(),
            lease: LeaseSpec::Existing(lease_id),
            wait: false,
            value: None,
            lock_delay_ms: 0,
            limit: 1,
            max_waiters: 10,
            max_leases: 100,
        })
    };
    assert!(matches!(
        sm.apply_with_id(Some("r"), acquire("a")),
        CommandResult::Granted(_)
    ));
    // Same id, same operation, same key: the first result again (token 1, not a new grant).
    let CommandResult::Granted(again) = sm.apply_with_id(Some("r"), acquire("a")) else {
        panic!("a retry is answered with the grant");
    };
    assert_eq!(again.token, 1);
    // Same id on another key: a new request, granted there.
    let CommandResult::Granted(other) = sm.apply_with_id(Some("r"), acquire("b")) else {
        panic!("another key is another request");
    };
    assert_eq!(other.key, "b");
}

#[test]
fn session_lease_holds_many_keys_and_revoke_releases_all() {
    let mut sm = Sm::new();
    let CommandResult::LeaseCreated { lease_id, .. } = sm.apply(Command::CreateLease {
        ttl_ms: 5_000,
        owner: "w".into(),
        max_leases: MAX_LEASES,
    }) else {
        panic!("lease");
    };
    for key in ["a", "b", "c"] {
        granted(sm.apply(Command::Acquire(acquire(
            Kind::Lock,
            key,
            "w",
            LeaseSpec::Existing(lease_id),
            false,
            1,
        ))));
    }
    // Re-acquiring with the same lease is idempotent.
    let again = granted(sm.apply(Command::Acquire(acquire(
        Kind::Lock,
        "a",
        "w",
        LeaseSpec::Existing(lease_id),
        false,
        1,
    ))));
    assert_eq!(again.token, 1);
    let r = sm.apply(Command::RevokeLease { lease_id });
    let CommandResult::LeaseEnded { released } = r else {
        panic!("revoke");
    };
    assert_eq!(released.len(), 3);
    assert_eq!(sm.state.lease_count(), 0);
}

#[test]
fn semaphore_admits_limit_holders_and_rejects_a_different_limit() {
    let mut sm = Sm::new();
    let sem = |owner: &str, limit: u32, wait: bool| {
        Command::Acquire(acquire(
            Kind::Semaphore,
            "s",
            owner,
            LeaseSpec::New { ttl_ms: 5_000 },
            wait,
            limit,
        ))
    };
    let a = granted(sm.apply(sem("a", 2, false)));
    let b = granted(sm.apply(sem("b", 2, false)));
    assert_ne!(a.token, b.token);
    assert!(matches!(
        sm.apply(sem("c", 2, false)),
        CommandResult::Busy { .. }
    ));
    assert_eq!(
        sm.apply(sem("d", 3, false)),
        CommandResult::Error(SmError::LimitMismatch { limit: 2 })
    );
    assert!(matches!(
        sm.apply(sem("e", 2, true)),
        CommandResult::Queued { .. }
    ));
    sm.apply(Command::ExpireLease {
        lease_id: a.lease_id,
    });
    let holders: Vec<_> = sm
        .state
        .resource(Kind::Semaphore, "s")
        .unwrap()
        .holders
        .iter()
        .map(|h| h.owner.clone())
        .collect();
    assert_eq!(holders, vec!["b".to_string(), "e".to_string()]);
}

#[test]
fn quotas_are_enforced() {
    let mut sm = Sm::new();
    granted(sm.acquire("k", "a", 5_000, false));
    let mut cmd = acquire(
        Kind::Lock,
        "k",
        "b",
        LeaseSpec::New { ttl_ms: 5_000 },
        true,
        1,
    );
    cmd.max_waiters = 1;
    assert!(matches!(
        sm.apply(Command::Acquire(cmd.clone())),
        CommandResult::Queued { .. }
    ));
    assert_eq!(
        sm.apply(Command::Acquire(cmd)),
        CommandResult::Error(SmError::TooManyWaiters { max: 1 })
    );
    let r = sm.apply(Command::CreateLease {
        ttl_ms: 5_000,
        owner: "x".into(),
        max_leases: 2,
    });
    assert_eq!(r, CommandResult::Error(SmError::TooManyLeases { max: 2 }));
}

#[test]
fn extend_and_set_value_check_ownership() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    let ext = |owner: &str, token, ttl_ms| Command::Extend {
        kind: Kind::Lock,
        key: "k".into(),
        owner: owner.into(),
        token,
        ttl_ms,
    };
    assert_eq!(
        sm.apply(ext("b", a.token, None)),
        CommandResult::Error(SmError::NotOwner)
    );
    assert_eq!(
        sm.apply(ext("a", a.token + 1, None)),
        CommandResult::Error(SmError::NotOwner)
    );
    assert_eq!(
        sm.apply(ext("a", a.token, Some(9_000))),
        CommandResult::Extended {
            token: a.token,
            lease_id: a.lease_id,
            ttl_ms: 9_000
        }
    );
    assert_eq!(sm.state.lease(a.lease_id).unwrap().ttl_ms, 9_000);
    let set = sm.apply(Command::SetValue {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: a.token,
        value: Some("v2".into()),
    });
    let CommandResult::ValueSet(view) = set else {
        panic!("value set");
    };
    assert_eq!(view.value.as_deref(), Some("v2"));
}

#[test]
fn the_entry_clock_never_runs_backwards() {
    let mut sm = Sm::new();
    sm.now_ms = 10_000;
    granted(sm.acquire("k", "a", 5_000, false));
    sm.now_ms = 5_000; // a new leader with a slower wall clock
    sm.apply(Command::Promote {
        kind: Kind::Lock,
        key: "k".into(),
    });
    assert_eq!(sm.state.now_ms(), 10_000);
}

#[test]
fn snapshot_round_trips_and_rejects_bad_input() {
    let mut sm = Sm::new();
    let a = granted(sm.acquire("k", "a", 5_000, false));
    sm.acquire("k", "b", 5_000, true);
    sm.apply(Command::ExpireLease {
        lease_id: a.lease_id,
    });
    let bytes = sm.state.encode();
    let back = LeaseState::decode(&bytes).expect("decodes");
    assert_eq!(back, sm.state);
    assert_eq!(back.encode(), bytes);
    assert!(matches!(LeaseState::decode(&[]), Err(DecodeError::Empty)));
    let mut wrong_version = bytes.clone();
    wrong_version[0] = 99;
    assert!(matches!(
        LeaseState::decode(&wrong_version),
        Err(DecodeError::Version(99))
    ));
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() / 2);
    assert!(matches!(
        LeaseState::decode(&truncated),
        Err(DecodeError::Corrupt(_))
    ));
    let mut trailing = bytes;
    trailing.push(0);
    assert!(matches!(
        LeaseState::decode(&trailing),
        Err(DecodeError::Corrupt(_))
    ));
}

// ----- property tests -----

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Lock), Just(Kind::Name), Just(Kind::Semaphore)]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string())
    ]
}

fn arb_owner() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("w1".to_string()),
        Just("w2".to_string()),
        Just("w3".to_string())
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    let lease_id = 1u64..12;
    let token = 1u64..40;
    prop_oneof![
        (500u64..5_000, arb_owner()).prop_map(|(ttl_ms, owner)| Command::CreateLease {
            ttl_ms,
            owner,
            max_leases: 8,
        }),
        (lease_id.clone(), 500u64..5_000)
            .prop_map(|(lease_id, ttl_ms)| Command::SetLeaseTtl { lease_id, ttl_ms }),
        lease_id
            .clone()
            .prop_map(|lease_id| Command::RevokeLease { lease_id }),
        lease_id
            .clone()
            .prop_map(|lease_id| Command::ExpireLease { lease_id }),
        (lease_id.clone(), 0u64..2).prop_map(|(lease_id, term)| Command::Expire { lease_id, term }),
        (
            arb_kind(),
            arb_key(),
            arb_owner(),
            prop_oneof![
                lease_id.clone().prop_map(LeaseSpec::Existing),
                (500u64..5_000).prop_map(|ttl_ms| LeaseSpec::New { ttl_ms })
            ],
            any::<bool>(),
            prop_oneof![Just(0u64), 1u64..3_000],
            1u32..4,
        )
            .prop_map(|(kind, key, owner, lease, wait, lock_delay_ms, limit)| {
                let limit = if kind == Kind::Semaphore { limit } else { 1 };
                Command::Acquire(Acquire {
                    kind,
                    key,
                    owner,
                    lease,
                    wait,
                    value: None,
                    lock_delay_ms,
                    limit,
                    max_waiters: 3,
                    max_leases: 8,
                })
            }),
        (arb_kind(), arb_key(), lease_id.clone()).prop_map(|(kind, key, lease_id)| {
            Command::CancelWait {
                kind,
                key,
                lease_id,
            }
        }),
        (arb_kind(), arb_key(), arb_owner(), token.clone()).prop_map(
            |(kind, key, owner, token)| Command::Release {
                kind,
                key,
                owner,
                token
            }
        ),
        (
            arb_kind(),
            arb_key(),
            arb_owner(),
            token,
            proptest::option::of(500u64..5_000)
        )
            .prop_map(|(kind, key, owner, token, ttl_ms)| Command::Extend {
                kind,
                key,
                owner,
                token,
                ttl_ms,
            }),
        (arb_kind(), arb_key()).prop_map(|(kind, key)| Command::Promote { kind, key }),
        (arb_kind(), arb_key(), proptest::option::of(1u64..40))
            .prop_map(|(kind, key, token)| { Command::ForceRelease { kind, key, token } }),
    ]
}

/// A log: batches of (request_id?, command) with clock steps between entries.
/// One entry of a generated log: a clock step and its (request id?, command) proposals.
type LogStep = (u64, Vec<(Option<u8>, Command)>);

fn arb_log() -> impl Strategy<Value = Vec<LogStep>> {
    proptest::collection::vec(
        (
            0u64..1_500,
            proptest::collection::vec((proptest::option::of(0u8..6), arb_command()), 1..4),
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Replaying one log on two replicas yields byte-identical snapshots; at no point does a
    /// key have more holders than its limit, and tokens grow with every grant of a key.
    #[test]
    fn replicas_agree_and_never_double_grant(log in arb_log()) {
        let mut one = LeaseState::default();
        let mut two = LeaseState::default();
        let mut clock_ms = 1_000u64;
        // Per key: the tokens of every holder seen so far and the largest of them.
        let mut seen: BTreeMap<(Kind, String), (u64, std::collections::BTreeSet<u64>)> = BTreeMap::new();
        for (index, (step_ms, proposals)) in log.into_iter().enumerate() {
            clock_ms += step_ms;
            let batch = Batch::new(clock_ms, proposals.into_iter().map(|(id, command)| Proposal {
                request_id: id.map(|i| format!("req-{i}")),
                caller: None,
                command,
            }).collect());
            let index = index as u64 + 1;
            let mut events_one = Vec::new();
            let mut events_two = Vec::new();
            let r1 = one.apply_batch(index, 1, &batch, &mut events_one);
            let r2 = two.apply_batch(index, 1, &batch, &mut events_two);
            prop_assert_eq!(&r1, &r2);
            prop_assert_eq!(&events_one, &events_two);
            if let Err(e) = one.check_invariants() {
                prop_assert!(false, "invariant broken: {}", e);
            }
            for (rid, resource) in &one.resources {
                if rid.0 != Kind::Semaphore {
                    prop_assert!(resource.holders.len() <= 1, "two holders of {:?}", rid);
                }
                let (max, tokens) = seen.entry(rid.clone()).or_default();
                for hold in &resource.holders {
                    if tokens.insert(hold.token) {
                        // A new holder of this key: its token is above every earlier holder's.
                        prop_assert!(hold.token > *max, "token {} not above {} for {:?}", hold.token, max, rid);
                        *max = hold.token;
                    }
                }
            }
        }
        let bytes = one.encode();
        prop_assert_eq!(&bytes, &two.encode());
        let back = LeaseState::decode(&bytes).expect("round trip");
        prop_assert_eq!(back, one);
    }
}

fn caller(name: &str, admin: bool, max_leases: Option<u64>) -> Caller {
    Caller {
        principal: name.to_string(),
        admin,
        max_leases,
    }
}

#[test]
fn a_lease_belongs_to_its_principal() {
    let mut sm = Sm::new();
    let (alice, bob, root) = (
        caller("alice", false, None),
        caller("bob", false, None),
        caller("root", true, None),
    );
    let create = Command::CreateLease {
        ttl_ms: 5_000,
        owner: "w".into(),
        max_leases: MAX_LEASES,
    };
    let CommandResult::LeaseCreated { lease_id, .. } = sm.apply_as(&alice, create) else {
        panic!("lease");
    };
    assert_eq!(
        sm.state.lease(lease_id).unwrap().principal.as_deref(),
        Some("alice")
    );
    let forbidden = SmError::Forbidden {
        lease_id,
        principal: "bob".into(),
        lease_principal: Some("alice".into()),
    };
    let attach = |owner: &str| {
        Command::Acquire(acquire(
            Kind::Lock,
            "k",
            owner,
            LeaseSpec::Existing(lease_id),
            false,
            1,
        ))
    };
    // Another principal can neither attach a hold, change, nor revoke the lease.
    assert_eq!(
        sm.apply_as(&bob, attach("b")),
        CommandResult::Error(forbidden.clone())
    );
    assert_eq!(
        sm.apply_as(
            &bob,
            Command::SetLeaseTtl {
                lease_id,
                ttl_ms: 9_000
            }
        ),
        CommandResult::Error(forbidden.clone())
    );
    assert_eq!(
        sm.apply_as(&bob, Command::RevokeLease { lease_id }),
        CommandResult::Error(forbidden.clone())
    );
    // Its own principal can; and a hold under it is the principal's too.
    let hold = granted(sm.apply_as(&alice, attach("a")));
    let release = Command::Release {
        kind: Kind::Lock,
        key: "k".into(),
        owner: "a".into(),
        token: hold.token,
    };
    assert_eq!(
        sm.apply_as(&bob, release.clone()),
        CommandResult::Error(forbidden)
    );
    let history = &sm.state.resource(Kind::Lock, "k").unwrap().history;
    assert_eq!(history.back().unwrap().principal.as_deref(), Some("alice"));
    // An admin may act on anyone's lease.
    assert_eq!(sm.apply_as(&root, release), CommandResult::Released);
    assert!(matches!(
        sm.apply_as(&root, Command::RevokeLease { lease_id }),
        CommandResult::LeaseEnded { .. }
    ));
    // Trusted callers (auth off) are not checked, and their leases have no principal.
    let CommandResult::LeaseCreated { lease_id, .. } = sm.apply(Command::CreateLease {
        ttl_ms: 5_000,
        owner: "w".into(),
        max_leases: MAX_LEASES,
    }) else {
        panic!("lease");
    };
    assert_eq!(sm.state.lease(lease_id).unwrap().principal, None);
    assert!(matches!(
        sm.apply_as(&alice, Command::RevokeLease { lease_id }),
        CommandResult::Error(SmError::Forbidden { .. })
    ));
}

#[test]
fn a_principal_quota_counts_its_live_leases_only() {
    let mut sm = Sm::new();
    let small = caller("small", false, Some(2));
    let other = caller("other", false, Some(2));
    let create = || Command::CreateLease {
        ttl_ms: 5_000,
        owner: "w".into(),
        max_leases: MAX_LEASES,
    };
    let first = sm.apply_as(&small, create());
    let CommandResult::LeaseCreated { lease_id, .. } = first else {
        panic!("lease");
    };
    // An implicit lease (acquire without a lease) counts too.
    let implicit = Command::Acquire(acquire(
        Kind::Lock,
        "q",
        "w",
        LeaseSpec::New { ttl_ms: 5_000 },
        false,
        1,
    ));
    let hold = granted(sm.apply_as(&small, implicit.clone()));
    let over = SmError::PrincipalQuota {
        principal: "small".into(),
        max: 2,
    };
    assert_eq!(
        sm.apply_as(&small, create()),
        CommandResult::Error(over.clone())
    );
    // Quotas are per principal.
    assert!(matches!(
        sm.apply_as(&other, create()),
        CommandResult::LeaseCreated { .. }
    ));
    // Ending leases (revoke, or releasing an implicit lease's hold) frees quota.
    sm.apply_as(&small, Command::RevokeLease { lease_id });
    sm.apply_as(
        &small,
        Command::Release {
            kind: Kind::Lock,
            key: "q".into(),
            owner: "w".into(),
            token: hold.token,
        },
    );
    assert_eq!(sm.state.principal_leases.get("small"), None);
    assert!(matches!(
        sm.apply_as(&small, create()),
        CommandResult::LeaseCreated { .. }
    ));
    // The counts are derived, and a snapshot round trip rebuilds them.
    let decoded = LeaseState::decode(&sm.state.encode()).unwrap();
    assert_eq!(decoded.principal_leases, sm.state.principal_leases);
    assert_eq!(decoded.principal_leases.get("small"), Some(&1));
}

#[test]
fn request_ids_are_per_principal() {
    let mut sm = Sm::new();
    let create = Command::CreateLease {
        ttl_ms: 5_000,
        owner: "w".into(),
        max_leases: MAX_LEASES,
    };
    let apply = |sm: &mut Sm, who: &str| {
        sm.index += 1;
        let batch = Batch::new(
            sm.now_ms,
            vec![Proposal {
                request_id: Some("same".into()),
                caller: Some(caller(who, false, None)),
                command: create.clone(),
            }],
        );
        sm.state
            .apply_batch(sm.index, sm.term, &batch, &mut sm.events)
            .results
            .pop()
            .unwrap()
    };
    let a = apply(&mut sm, "alice");
    let b = apply(&mut sm, "bob");
    assert_ne!(a, b, "bob must not get alice's result for her request id");
    assert_eq!(apply(&mut sm, "alice"), a, "alice's retry is deduplicated");
}

#[test]
fn entries_written_before_auth_still_apply() {
    let mut state = LeaseState::default();
    let batch = Batch::V1 {
        proposed_at_ms: 1_000,
        proposals: vec![ProposalV1 {
            request_id: None,
            command: Command::CreateLease {
                ttl_ms: 5_000,
                owner: "w".into(),
                max_leases: MAX_LEASES,
            },
        }],
    };
    // The V1 layout decodes from its bytes as before, and applies as a trusted caller's.
    let bytes = bincode::serde::encode_to_vec(&batch, bincode::config::standard()).unwrap();
    let (decoded, _): (Batch, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    let result = state.apply_batch(1, 1, &decoded, &mut Vec::new());
    let CommandResult::LeaseCreated { lease_id, .. } = result.results[0] else {
        panic!("lease");
    };
    assert_eq!(state.lease(lease_id).unwrap().principal, None);
}

/// `acquisitions` counts a key's grants while the state remembers the key: held, queued
/// or idle. An idle key is forgotten once `MAX_IDLE_RESOURCES` more recently changed keys
/// are idle; only then does its count (and history) restart. This pins that rule.
#[test]
fn acquisitions_survive_until_the_key_is_evicted_as_the_oldest_idle_key() {
    let mut state = LeaseState::default();
    let mut index = 0;
    let mut events = Vec::new();
    let cycle = |key: &str| {
        vec![Proposal::trusted(
            None,
            Command::Acquire(Acquire {
                kind: Kind::Lock,
                key: key.to_string(),
                owner: "o".into(),
                lease: LeaseSpec::New { ttl_ms: 10_000 },
                wait: false,
                value: None,
                lock_delay_ms: 0,
                limit: 1,
                max_waiters: MAX_WAITERS,
                max_leases: u64::MAX,
            }),
        )]
    };
    let mut run = |state: &mut LeaseState, keys: &[String]| {
        let mut proposals = Vec::new();
        for key in keys {
            proposals.extend(cycle(key));
        }
        index += 1;
        let out = state.apply_batch(index, 1, &Batch::new(1_000, proposals), &mut events);
        let mut releases = Vec::new();
        for (key, result) in keys.iter().zip(out.results) {
            let CommandResult::Granted(hold) = result else {
                panic!("{key}: {result:?}");
            };
            releases.push(Proposal::trusted(
                None,
                Command::Release {
                    kind: Kind::Lock,
                    key: key.clone(),
                    owner: "o".into(),
                    token: hold.token,
                },
            ));
        }
        index += 1;
        state.apply_batch(index, 1, &Batch::new(1_000, releases), &mut events);
        events.clear();
    };
    let acquisitions = |state: &LeaseState| {
        state
            .resource(Kind::Lock, "first")
            .map_or(0, |r| r.acquisitions)
    };
    for _ in 0..3 {
        run(&mut state, &["first".to_string()]);
    }
    assert_eq!(acquisitions(&state), 3);
    // One short of the cap: "first" is the oldest idle key, still remembered.
    let others: Vec<String> = (0..MAX_IDLE_RESOURCES - 1)
        .map(|i| format!("other-{i}"))
        .collect();
    for chunk in others.chunks(5_000) {
        run(&mut state, chunk);
    }
    assert_eq!(acquisitions(&state), 3, "remembered while within the cap");
    // One more idle key: the oldest, "first", is forgotten; its count restarts.
    run(&mut state, &["one-more".to_string()]);
    assert_eq!(acquisitions(&state), 0, "forgotten as the oldest idle key");
    run(&mut state, &["first".to_string()]);
    assert_eq!(acquisitions(&state), 1);
}

/// `KeySet` replaced a `BTreeSet<ResourceId>` in `Lease`: both must encode to the same
/// bytes, so snapshots written before the change decode after it and the other way round.
#[test]
fn key_set_encodes_as_the_btree_set_it_replaced() {
    use std::collections::BTreeSet;
    let keys = [
        (Kind::Semaphore, "s".to_string()),
        (Kind::Lock, "b".to_string()),
        (Kind::Lock, "a".to_string()),
        (Kind::Name, "n".to_string()),
    ];
    let mut set = KeySet::new();
    let mut btree = BTreeSet::new();
    for k in keys.iter().cycle().take(7) {
        assert_eq!(set.insert(k.clone()), btree.insert(k.clone()));
    }
    assert_eq!(set.len(), 4);
    assert!(set.iter().zip(btree.iter()).all(|(a, b)| a == b));
    let config = bincode::config::standard();
    let ours = bincode::serde::encode_to_vec(&set, config).unwrap();
    let theirs = bincode::serde::encode_to_vec(&btree, config).unwrap();
    assert_eq!(ours, theirs);
    let (decoded, _): (KeySet, usize) = bincode::serde::decode_from_slice(&theirs, config).unwrap();
    assert_eq!(decoded, set);
    assert!(set.remove(&(Kind::Lock, "a".to_string())));
    assert!(!set.remove(&(Kind::Lock, "a".to_string())));
    assert!(!set.contains(&(Kind::Lock, "a".to_string())));
    assert!(set.contains(&(Kind::Name, "n".to_string())));
}

/// The history ring grows one record at a time up to its capacity, then drops the oldest.
#[test]
fn history_ring_grows_to_capacity_and_keeps_the_newest() {
    let mut r = Resource::new(1);
    for i in 0..(HISTORY_RING_CAPACITY as u64 + 5) {
        r.record(HistoryRecord {
            event: HistoryKind::Acquired,
            owner: "o".into(),
            token: i,
            at_ms: i,
            held_ms: None,
            waited_ms: None,
            principal: None,
        });
        assert!(r.history.capacity() <= HISTORY_RING_CAPACITY.max(4));
    }
    assert_eq!(r.history.len(), HISTORY_RING_CAPACITY);
    assert_eq!(r.history.front().unwrap().token, 5);
    assert_eq!(
        r.history.back().unwrap().token,
        HISTORY_RING_CAPACITY as u64 + 4
    );
}

/// The state's persistent collections (`imbl`, with records behind `Arc`) replaced
/// `BTreeMap`, `BTreeSet` and `VecDeque`: each must encode to the same bytes, so snapshots
/// written before the change decode after it.
#[test]
fn persistent_collections_encode_as_the_std_ones_they_replaced() {
    use std::collections::{BTreeSet, VecDeque};
    use std::sync::Arc;
    let config = bincode::config::standard();
    let enc = |v: &dyn erased::Enc| v.bytes(config);
    let pairs: Vec<(u64, String)> = [(9, "c"), (1, "a"), (5, "b")]
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();

    let std_map: BTreeMap<u64, String> = pairs.iter().cloned().collect();
    let our_map: imbl::OrdMap<u64, Arc<String>> = pairs
        .iter()
        .map(|(k, v)| (*k, Arc::new(v.clone())))
        .collect();
    assert_eq!(enc(&our_map), enc(&std_map));

    let std_set: BTreeSet<(u64, String)> = pairs.iter().cloned().collect();
    let our_set: imbl::OrdSet<(u64, String)> = pairs.iter().cloned().collect();
    assert_eq!(enc(&our_set), enc(&std_set));

    let std_deque: VecDeque<(u64, String)> = pairs.iter().cloned().collect();
    let our_vector: imbl::Vector<(u64, String)> = pairs.iter().cloned().collect();
    assert_eq!(enc(&our_vector), enc(&std_deque));

    let (decoded, _): (imbl::OrdMap<u64, Arc<String>>, usize) =
        bincode::serde::decode_from_slice(&enc(&std_map), config).unwrap();
    assert_eq!(decoded, our_map);
}

mod erased {
    pub trait Enc {
        fn bytes(&self, config: bincode::config::Configuration) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Enc for T {
        fn bytes(&self, config: bincode::config::Configuration) -> Vec<u8> {
            bincode::serde::encode_to_vec(self, config).unwrap()
        }
    }
}

#[test]
fn incarnations_are_recorded_kept_in_snapshots_and_format_2_still_reads() {
    let mut sm = Sm::new();
    sm.acquire("a", "o", 5_000, false);
    assert_eq!(
        sm.apply(Command::RecordIncarnation {
            node_id: 2,
            incarnation: 77
        }),
        CommandResult::IncarnationRecorded
    );
    assert_eq!(sm.state.incarnation(2), Some(77));
    assert_eq!(sm.state.incarnation(3), None);
    let encoded = sm.state.encode();
    assert_eq!(LeaseState::decode(&encoded).unwrap(), sm.state);

    // A format-2 snapshot (before incarnations): the same state, no tail.
    let mut old = sm.state.clone();
    old.forget_incarnations();
    let mut v2 = old.encode();
    v2[0] = 2;
    v2.pop(); // the empty map's length
    assert_eq!(LeaseState::decode(&v2).unwrap(), old);

    // Only an admin (or the node itself, which proposes without a caller) records one.
    let caller = Caller {
        principal: "app".into(),
        admin: false,
        max_leases: None,
    };
    let result = sm.apply_as(
        &caller,
        Command::RecordIncarnation {
            node_id: 2,
            incarnation: 1,
        },
    );
    assert!(
        matches!(result, CommandResult::Error(SmError::AdminRequired { .. })),
        "{result:?}"
    );
    assert_eq!(sm.state.incarnation(2), Some(77));
}
