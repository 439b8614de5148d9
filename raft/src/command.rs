//! The replicated command set: what a Raft log entry carries and what applying it returns.
//!
//! These types are persisted (in the log and in snapshots) and sent between peers, so they
//! are versioned: [`Batch`] is an enum whose variants name the format version. A later
//! release adds `V2` and keeps reading `V1`.

use serde::{Deserialize, Serialize};

pub type LeaseId = u64;
pub type Token = u64;

/// What kind of holdable thing a key names. Each kind has its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Lock,
    Name,
    Semaphore,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Name => "name",
            Kind::Semaphore => "semaphore",
        }
    }
}

/// A resource's identity: its kind and key.
pub type ResourceId = (Kind, String);

/// One log entry's payload: the commands gathered by the proposer into one Raft entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Batch {
    /// Before auth: proposals without a [`Caller`]. Still read (entries in old logs), never
    /// written.
    V1 {
        /// The leader's wall clock (ms since the Unix epoch) when it proposed the entry.
        /// The only time the state machine ever sees (SPEC §2 rule 6).
        proposed_at_ms: u64,
        proposals: Vec<ProposalV1>,
    },
    /// Proposals carry the [`Caller`] they were made for. Still read, never written.
    V2 {
        /// As in `V1`.
        proposed_at_ms: u64,
        proposals: Vec<Proposal>,
    },
    /// As `V2`, stamped with the cluster's clock, and applied with the dedupe window's
    /// minimum age (an id is kept [`DEDUPE_MIN_WINDOW_MS`] whatever the count). Older
    /// entries keep the rule they were written under (count or age, whichever first), so
    /// that a replica replaying an old log prunes exactly what the binary that wrote its
    /// snapshot pruned.
    ///
    /// [`DEDUPE_MIN_WINDOW_MS`]: crate::state::DEDUPE_MIN_WINDOW_MS
    V3 {
        /// The cluster's time (ms since the Unix epoch) when the leader proposed the entry.
        proposed_at_ms: u64,
        proposals: Vec<Proposal>,
    },
}

impl Batch {
    pub fn new(proposed_at_ms: u64, proposals: Vec<Proposal>) -> Self {
        Batch::V3 {
            proposed_at_ms,
            proposals,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Batch::V1 { proposals, .. } => proposals.len(),
            Batch::V2 { proposals, .. } | Batch::V3 { proposals, .. } => proposals.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How openraft's logs name an entry's payload: its size, not its commands.
impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} commands", self.len())
    }
}

/// The per-command results of one applied [`Batch`], in proposal order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The log index the batch was applied at.
    pub index: u64,
    pub results: Vec<CommandResult>,
}

/// One client command with its optional idempotency key and the caller it is made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// A retry carrying the same `request_id` within the dedupe window gets the
    /// original result instead of acting twice.
    pub request_id: Option<String>,
    pub command: Command,
    /// The authenticated principal the command acts for; `None` for a trusted caller (auth
    /// off, an embedding application, or the node itself). Set only by the node that
    /// authenticated the client, and carried to the leader over the authenticated peer
    /// channel, never taken from client-supplied data.
    pub caller: Option<Caller>,
}

impl Proposal {
    /// A proposal for a trusted caller.
    pub fn trusted(request_id: Option<String>, command: Command) -> Self {
        Proposal {
            request_id,
            command,
            caller: None,
        }
    }
}

/// A [`Batch::V1`] proposal: a trusted caller's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalV1 {
    pub request_id: Option<String>,
    pub command: Command,
}

/// Who a command acts for, when auth is on (SPEC §5 "Auth").
///
/// The state machine records `principal` with every lease it creates, refuses commands on
/// another principal's lease unless `admin`, and holds the principal to `max_leases`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caller {
    pub principal: String,
    /// Admins act on every principal's leases.
    pub admin: bool,
    /// The most live leases this principal may have (`max_leases` in the tokens file).
    pub max_leases: Option<u64>,
}

/// How an acquire names the lease its hold lives under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseSpec {
    /// An existing lease (a session with possibly many holds).
    Existing(LeaseId),
    /// Create an implicit lease for this one hold; it is revoked when the hold ends.
    New { ttl_ms: u64 },
}

impl Command {
    /// What a `request_id` is remembered for: the operation and what it acts on. A retry
    /// (same id, same operation on the same key or lease) gets the first result; an id
    /// reused for another operation or key is a new request, never another's result.
    pub fn dedupe_scope(&self) -> String {
        match self {
            Command::CreateLease { .. } => "lease/create".into(),
            Command::SetLeaseTtl { lease_id, .. } => format!("lease/{lease_id}/ttl"),
            Command::RevokeLease { lease_id } => format!("lease/{lease_id}/revoke"),
            Command::ExpireLease { lease_id } | Command::Expire { lease_id, .. } => {
                format!("lease/{lease_id}/expire")
            }
            Command::Acquire(a) => format!("{}/{}/acquire", a.kind.as_str(), a.key),
            Command::CancelWait { kind, key, .. } => format!("{}/{key}/cancel", kind.as_str()),
            Command::Release { kind, key, .. } => format!("{}/{key}/release", kind.as_str()),
            Command::Extend { kind, key, .. } => format!("{}/{key}/extend", kind.as_str()),
            Command::SetValue { kind, key, .. } => format!("{}/{key}/value", kind.as_str()),
            Command::Promote { kind, key } => format!("{}/{key}/promote", kind.as_str()),
            Command::ForceRelease { kind, key, .. } => format!("{}/{key}/force", kind.as_str()),
            Command::RecordIncarnation { node_id, .. } => format!("member/{node_id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    pub kind: Kind,
    pub key: String,
    pub owner: String,
    pub lease: LeaseSpec,
    /// Queue behind the current holders instead of failing.
    pub wait: bool,
    pub value: Option<String>,
    pub lock_delay_ms: u64,
    /// Holders allowed at once: 1 for locks and names, N for semaphores.
    pub limit: u32,
    /// Quotas of the proposing node, carried in the entry so every replica applies the same.
    pub max_waiters: u32,
    pub max_leases: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateLease {
        ttl_ms: u64,
        owner: String,
        max_leases: u64,
    },
    /// Change a lease's TTL (a keepalive without a new TTL never reaches the log).
    SetLeaseTtl {
        lease_id: LeaseId,
        ttl_ms: u64,
    },
    /// Client or admin revocation.
    RevokeLease {
        lease_id: LeaseId,
    },
    /// Before peer protocol 4: an expiry without its term. Still read (entries in old
    /// logs), never written; see [`Command::Expire`].
    ExpireLease {
        lease_id: LeaseId,
    },
    Acquire(Acquire),
    /// Remove the waiter queued under `lease_id` (its wait ran out or its client left).
    /// If it was granted in the meantime, the result is the grant.
    CancelWait {
        kind: Kind,
        key: String,
        lease_id: LeaseId,
    },
    Release {
        kind: Kind,
        key: String,
        owner: String,
        token: Token,
    },
    /// Check ownership and optionally set a new TTL on the hold's lease.
    Extend {
        kind: Kind,
        key: String,
        owner: String,
        token: Token,
        ttl_ms: Option<u64>,
    },
    /// Proclaim: replace the value of a hold.
    SetValue {
        kind: Kind,
        key: String,
        owner: String,
        token: Token,
        value: Option<String>,
    },
    /// Grant waiters of a key whose lock-delay has elapsed (proposed by the leader).
    Promote {
        kind: Kind,
        key: String,
    },
    /// An operator ends a hold whoever owns it: the hold with `token`, or (`None`) the
    /// key's only holder. The next waiter is granted in the same apply. The proposal's
    /// caller, when there is one, is recorded as who did it.
    ForceRelease {
        kind: Kind,
        key: String,
        token: Option<Token>,
    },
    /// Proposed only by the lease actor of the leader of `term`, when the lease's deadline
    /// passed in that term. It ends the lease only from an entry of `term`: appended in a
    /// later term (the leader lost leadership and won it back before the proposal reached
    /// the log) it is stale and changes nothing ([`CommandResult::StaleExpiry`]), because
    /// the later term re-armed the lease and its keepalives may have renewed it.
    Expire {
        lease_id: LeaseId,
        term: u64,
    },
    /// A member records the identity of its data directory (a random number drawn when
    /// the directory was created), once it has caught up. A member that starts with an
    /// empty directory while the cluster holds a record for it lost its data, and must
    /// rejoin (`leasehold serve --rejoin`) rather than vote with an empty log.
    RecordIncarnation {
        node_id: u64,
        incarnation: u64,
    },
}

/// A granted hold as the state machine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub kind: Kind,
    pub key: String,
    pub owner: String,
    pub token: Token,
    pub lease_id: LeaseId,
    pub ttl_ms: u64,
    pub locked_at_ms: u64,
    pub acquisitions: u64,
    pub value: Option<String>,
    pub limit: u32,
}

/// Why an acquire did not get a slot right away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BusyReason {
    /// Every slot is taken.
    Held,
    /// The key is free but under lock-delay until the given time.
    Delayed { until_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    Released,
    Expired,
    Revoked,
    /// Ended by an operator's force release.
    Stolen,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Stolen => "stolen",
        }
    }
}

/// Errors the state machine decides; each maps to one documented API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmError {
    LeaseNotFound {
        lease_id: LeaseId,
    },
    NotOwner,
    /// Nothing of this kind is held or queued under the key (names: `name_not_found`).
    NotFound,
    LimitMismatch {
        limit: u32,
    },
    TooManyWaiters {
        max: u32,
    },
    TooManyLeases {
        max: u64,
    },
    /// The lease already waits for this key.
    AlreadyWaiting,
    /// The caller may not act on this lease: it belongs to another principal.
    Forbidden {
        lease_id: LeaseId,
        principal: String,
        /// The lease's principal (`None`: created without auth).
        lease_principal: Option<String>,
    },
    /// The caller's principal has `max` live leases already.
    PrincipalQuota {
        principal: String,
        max: u64,
    },
    /// Not the holder any more: an operator force-released this hold (`by`: the
    /// operator's principal, when auth is on).
    Stolen {
        by: Option<String>,
    },
    /// A semaphore with several holders: a force release must name the slot's token.
    SlotTokenRequired {
        holders: u32,
    },
    /// Only an admin may do this (a force release).
    AdminRequired {
        principal: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    LeaseCreated {
        lease_id: LeaseId,
        ttl_ms: u64,
        owner: String,
    },
    LeaseUpdated {
        lease_id: LeaseId,
        ttl_ms: u64,
    },
    /// The lease ended; these resources were released (and passed on to waiters).
    LeaseEnded {
        released: Vec<ResourceId>,
    },
    Granted(HoldView),
    /// Queued FIFO; the waiter is identified by its lease.
    Queued {
        lease_id: LeaseId,
        position: u32,
        /// True if the acquire created the lease (it is revoked when the wait is cancelled).
        implicit_lease: bool,
    },
    Busy {
        holders: Vec<HoldView>,
        reason: BusyReason,
    },
    WaitCancelled,
    Released,
    Extended {
        token: Token,
        lease_id: LeaseId,
        ttl_ms: u64,
    },
    ValueSet(HoldView),
    Promoted,
    Error(SmError),
    /// A force release ended this hold.
    ForceReleased {
        owner: String,
        token: Token,
    },
    /// An [`Command::Expire`] from an earlier term than its entry's: nothing changed.
    StaleExpiry,
    /// A [`Command::RecordIncarnation`] was recorded.
    IncarnationRecorded,
}
