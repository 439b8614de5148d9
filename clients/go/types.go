package leasehold

import "time"

// Holder is one hold of a lock or of a semaphore slot.
type Holder struct {
	Key   string
	Owner string
	// Token is the fencing token: it strictly increases for each new holder of a key.
	Token   uint64
	LeaseID uint64
	TTL     time.Duration
	// LockedAt is the leader's wall-clock time of the grant.
	LockedAt time.Time
	// ExpiresIn is the time left as the serving node knows it (exact on the leader).
	ExpiresIn time.Duration
	// Acquisitions counts the grants of this key while the cluster remembered it.
	Acquisitions uint64
	Value        string
}

// LockInfo is a lock's state, as Get reads it.
type LockInfo struct {
	Key  string
	Held bool
	// Holder is the current hold; nil when the lock is free.
	Holder *Holder
	// Waiters is the length of the queue of blocking acquires.
	Waiters int
	// Queue lists the queued acquires, first in line first.
	Queue []Waiter
	// Index is the key's modify index.
	Index uint64
}

// Waiter is one queued acquire or campaign.
type Waiter struct {
	Owner   string
	LeaseID uint64
	// Position is the place in the queue, from 1 (next to be granted).
	Position int
	Waited   time.Duration
}

// Release says how a hold ended, as WaitForRelease reports it.
type Release struct {
	// Reason is "released", "expired", "revoked" or "stolen"; empty when the key was
	// never held.
	Reason string
	Owner  string
	Token  uint64
	At     time.Time
}

// SemaphoreInfo is a semaphore's state: its holders and queue.
type SemaphoreInfo struct {
	Key     string
	Limit   int
	Holders []Holder
	Waiters int
	Queue   []Waiter
	Index   uint64
}

// NameInfo is a name's state (whereis): its holder, or a vacancy.
type NameInfo struct {
	Name       string
	Registered bool
	// The holder, when Registered.
	Owner        string
	Value        string
	Token        uint64
	LeaseID      uint64
	RegisteredAt time.Time
	ExpiresIn    time.Duration
	// Vacated says how the previous holder's term ended, when the server reports it (a
	// blocking read that passed through a vacancy).
	Vacated *Vacancy
	// Queue lists the queued campaigns, first in line first.
	Queue []Waiter
	Index uint64
}

// Vacancy is the end of a name holder's term.
type Vacancy struct {
	Owner string
	Token uint64
	// Reason is "released", "expired", "revoked" or "stolen".
	Reason string
	At     time.Time
}

// Lease is a granted lease (a session that many holds can share).
type Lease struct {
	ID    uint64
	TTL   time.Duration
	Owner string
}

// LeaseInfo is a lease and what lives under it.
type LeaseInfo struct {
	ID        uint64
	TTL       time.Duration
	Owner     string
	Remaining time.Duration
	// Keys of the locks, names and semaphores held under the lease.
	Locks      []string
	Names      []string
	Semaphores []string
	// Principal is the lease's owner principal (with auth on).
	Principal string
}

// Expiration is one entry of the cluster's recent expirations.
type Expiration struct {
	// Kind is "lock", "name" or "semaphore".
	Kind      string
	Key       string
	Owner     string
	Token     uint64
	ExpiredAt time.Time
}

// HistoryEvent is one event of a key's history.
type HistoryEvent struct {
	// Event is "acquired", "released", "expired", "revoked" or "stolen".
	Event  string
	Owner  string
	Token  uint64
	At     time.Time
	Held   time.Duration
	Waited time.Duration
	// Principal is the hold's principal (with auth on).
	Principal string
}

// ClusterStatus is one node's view of the cluster.
type ClusterStatus struct {
	NodeID uint64
	// LeaderID is 0 while there is no leader.
	LeaderID     uint64
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	Members      []Member
}

// Member is one member of the cluster.
type Member struct {
	ID         uint64
	PeerAddr   string
	ClientAddr string
	Voter      bool
}

// ----- wire shapes (SPEC §3) and their conversions -----

func ms(v uint64) time.Duration { return time.Duration(v) * time.Millisecond }

func msTime(v uint64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(v))
}

// toMs converts a duration for the wire, rounding a fraction of a millisecond up so that
// a positive duration never becomes 0.
func toMs(d time.Duration) int64 {
	if d > 0 && d%time.Millisecond != 0 {
		return int64(d/time.Millisecond) + 1
	}
	return int64(d / time.Millisecond)
}

type wireHolder struct {
	Key          string  `json:"key"`
	Owner        string  `json:"owner"`
	Token        uint64  `json:"token"`
	LeaseID      uint64  `json:"lease_id"`
	TTLMs        uint64  `json:"ttl_ms"`
	LockedAtMs   uint64  `json:"locked_at_ms"`
	ExpiresInMs  uint64  `json:"expires_in_ms"`
	Acquisitions uint64  `json:"acquisitions"`
	Value        *string `json:"value"`
}

func (w wireHolder) holder() Holder {
	return Holder{
		Key: w.Key, Owner: w.Owner, Token: w.Token, LeaseID: w.LeaseID, TTL: ms(w.TTLMs),
		LockedAt: msTime(w.LockedAtMs), ExpiresIn: ms(w.ExpiresInMs),
		Acquisitions: w.Acquisitions, Value: str(w.Value),
	}
}

func holders(ws []wireHolder) []Holder {
	out := make([]Holder, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.holder())
	}
	return out
}

func str(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

type wireWaiter struct {
	Owner    string `json:"owner"`
	LeaseID  uint64 `json:"lease_id"`
	Position int    `json:"position"`
	WaitedMs uint64 `json:"waited_ms"`
}

func waiters(ws []wireWaiter) []Waiter {
	out := make([]Waiter, 0, len(ws))
	for _, w := range ws {
		out = append(out, Waiter{Owner: w.Owner, LeaseID: w.LeaseID, Position: w.Position, Waited: ms(w.WaitedMs)})
	}
	return out
}

type wireLockState struct {
	wireHolder
	Key     string       `json:"key"`
	Held    bool         `json:"held"`
	Waiters int          `json:"waiters"`
	Queue   []wireWaiter `json:"queue"`
	Index   uint64       `json:"index"`
}

func (w wireLockState) info() *LockInfo {
	info := &LockInfo{Key: w.Key, Held: w.Held, Waiters: w.Waiters, Queue: waiters(w.Queue), Index: w.Index}
	if w.Held {
		h := w.wireHolder.holder()
		h.Key = w.Key
		info.Holder = &h
	}
	return info
}

type wireSemaphoreState struct {
	Key     string       `json:"key"`
	Limit   int          `json:"limit"`
	Holders []wireHolder `json:"holders"`
	Waiters int          `json:"waiters"`
	Queue   []wireWaiter `json:"queue"`
	Index   uint64       `json:"index"`
}

func (w wireSemaphoreState) info() SemaphoreInfo {
	return SemaphoreInfo{Key: w.Key, Limit: w.Limit, Holders: holders(w.Holders), Waiters: w.Waiters, Queue: waiters(w.Queue), Index: w.Index}
}

type wireVacancy struct {
	Owner  string `json:"owner"`
	Token  uint64 `json:"token"`
	Reason string `json:"reason"`
	AtMs   uint64 `json:"at_ms"`
}

// wireName is both a name record (a grant, a list entry) and a name state (whereis).
type wireName struct {
	Name           string       `json:"name"`
	Registered     *bool        `json:"registered"`
	Owner          string       `json:"owner"`
	Value          *string      `json:"value"`
	Token          uint64       `json:"token"`
	LeaseID        uint64       `json:"lease_id"`
	RegisteredAtMs uint64       `json:"registered_at_ms"`
	ExpiresInMs    uint64       `json:"expires_in_ms"`
	Vacated        *wireVacancy `json:"vacated"`
	Queue          []wireWaiter `json:"queue"`
	Index          uint64       `json:"index"`
}

func (w wireName) info() *NameInfo {
	info := &NameInfo{
		Name: w.Name, Registered: w.Registered == nil || *w.Registered,
		Queue: waiters(w.Queue), Index: w.Index,
	}
	if info.Registered {
		info.Owner, info.Value, info.Token, info.LeaseID = w.Owner, str(w.Value), w.Token, w.LeaseID
		info.RegisteredAt, info.ExpiresIn = msTime(w.RegisteredAtMs), ms(w.ExpiresInMs)
	}
	if v := w.Vacated; v != nil {
		info.Vacated = &Vacancy{Owner: v.Owner, Token: v.Token, Reason: v.Reason, At: msTime(v.AtMs)}
	}
	return info
}

type wireLeaseInfo struct {
	LeaseID     uint64   `json:"lease_id"`
	TTLMs       uint64   `json:"ttl_ms"`
	Owner       string   `json:"owner"`
	RemainingMs uint64   `json:"remaining_ms"`
	Locks       []string `json:"locks"`
	Names       []string `json:"names"`
	Semaphores  []string `json:"semaphores"`
	Principal   string   `json:"principal"`
}

func (w wireLeaseInfo) info() LeaseInfo {
	return LeaseInfo{
		ID: w.LeaseID, TTL: ms(w.TTLMs), Owner: w.Owner, Remaining: ms(w.RemainingMs),
		Locks: w.Locks, Names: w.Names, Semaphores: w.Semaphores, Principal: w.Principal,
	}
}

type wireHistoryEvent struct {
	Event     string `json:"event"`
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	AtMs      uint64 `json:"at_ms"`
	HeldMs    uint64 `json:"held_ms"`
	WaitedMs  uint64 `json:"waited_ms"`
	Principal string `json:"principal"`
}

type wireCluster struct {
	NodeID       uint64  `json:"node_id"`
	LeaderID     *uint64 `json:"leader_id"`
	Term         uint64  `json:"term"`
	CommitIndex  uint64  `json:"commit_index"`
	AppliedIndex uint64  `json:"applied_index"`
	Members      []struct {
		ID         uint64 `json:"id"`
		Addr       string `json:"addr"`
		ClientAddr string `json:"client_addr"`
		Voter      bool   `json:"voter"`
	} `json:"members"`
}
