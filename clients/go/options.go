package leasehold

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Default lease durations.
const (
	// DefaultLeaseDuration is the TTL of a lock or semaphore slot without
	// WithLeaseDuration.
	DefaultLeaseDuration = 30 * time.Second
	// DefaultElectionLeaseDuration is the TTL of a name held by Campaign or Register
	// without WithLeaseDuration.
	DefaultElectionLeaseDuration = 10 * time.Second
	// DefaultCampaignWait bounds each queued request of a Campaign without WithWait (the
	// campaign itself goes on until elected or its context ends).
	DefaultCampaignWait = 60 * time.Second
)

// LockOption configures an acquire (AcquireLock, AcquireSemaphore, Campaign, Register),
// or, given to New, every acquire of a client.
type LockOption func(*lockOptions)

type lockOptions struct {
	ttl       time.Duration
	ttlSet    bool
	heartbeat time.Duration // 0: ttl/3
	owner     string
	ownerSet  bool
	wait      time.Duration
	value     *string
	requestID string
	drift     float64
	leaseID   uint64
	lockDelay time.Duration
	err       error // an option that cannot be used (invalid data)
}

// WithLeaseDuration sets the TTL of the hold's implicit lease. The client renews it
// every heartbeat period and believes it holds until t_send + ttl × (1 − drift).
func WithLeaseDuration(d time.Duration) LockOption {
	return func(o *lockOptions) { o.ttl, o.ttlSet = d, true }
}

// WithHeartbeatPeriod sets how often the hold is renewed: default a third of the lease
// duration, and it must be below half of it.
func WithHeartbeatPeriod(d time.Duration) LockOption {
	return func(o *lockOptions) { o.heartbeat = d }
}

// WithOwnerName sets the owner recorded with the hold (default "<hostname>-<pid>-<n>",
// unique per hold within a process).
func WithOwnerName(owner string) LockOption {
	return func(o *lockOptions) { o.owner, o.ownerSet = owner, true }
}

// WithWait makes the acquire blocking: it queues FIFO for up to d (bounded by the
// context's deadline) and fails with a *LockNotGrantedError if the key is still held
// then. 0 (the default) tries once. For Campaign it bounds each queued request.
func WithWait(d time.Duration) LockOption {
	return func(o *lockOptions) { o.wait = d }
}

// WithData stores a value with the hold (at most 64 KiB of UTF-8 text: the value is a
// JSON string; encode binary data, for example as base64).
func WithData[T ~[]byte | ~string](data T) LockOption {
	return func(o *lockOptions) {
		s := string(data)
		if !utf8.ValidString(s) {
			o.err = invalid("value", "must be UTF-8 text (encode binary data, for example as base64)")
			return
		}
		o.value = &s
	}
}

// WithRequestID sets the idempotency key of the acquire (default: a fresh one per call,
// see Client.NewRequestID). Sending an acquire again with the same id within the
// server's dedupe window returns the first result instead of acting twice. That result
// did not renew the lease, so a grant for a request id given here is re-anchored with an
// immediate renewal before it is returned, and one whose hold has ended since is an
// error (matching ErrNotOwner or ErrLeaseNotFound), not a Lock. It is an option of one
// call: New refuses it as a client-wide default.
func WithRequestID(id string) LockOption {
	return func(o *lockOptions) { o.requestID = id }
}

// WithDrift sets the assumed clock-rate difference used by the client deadline
// (default DefaultDrift, 1 %; must be in [0, 0.5)).
func WithDrift(drift float64) LockOption {
	return func(o *lockOptions) { o.drift = drift }
}

// WithLease puts the hold under an existing lease (see GrantLease) instead of a new
// implicit one: many holds share one session, and revoking it ends them all. The hold's
// TTL is then the lease's, and renewing the hold keeps the lease alive; releasing the
// hold leaves the lease.
func WithLease(leaseID uint64) LockOption {
	return func(o *lockOptions) { o.leaseID = leaseID }
}

// WithLockDelay sets lock-delay (locks only): if this hold ends by expiry rather than by
// release, nobody is granted the key until d after the expiry.
func WithLockDelay(d time.Duration) LockOption {
	return func(o *lockOptions) { o.lockDelay = d }
}

var ownerCounter atomic.Uint64

// defaultOwner is "<hostname>-<pid>-<n>".
func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	return fmt.Sprintf("%s-%d-%d", host, os.Getpid(), ownerCounter.Add(1))
}

// lockDefaults and electionDefaults are the options before the client's and the call's.
var (
	lockDefaults     = lockOptions{ttl: DefaultLeaseDuration, drift: DefaultDrift}
	electionDefaults = lockOptions{ttl: DefaultElectionLeaseDuration, drift: DefaultDrift}
)

// options applies the client's defaults, then opts, to base; it checks an explicit
// heartbeat against a positive TTL before anything is sent.
func (c *Client) options(base lockOptions, opts []LockOption) (lockOptions, error) {
	o := base
	for _, opt := range c.defaults {
		opt(&o)
	}
	if o.requestID != "" {
		return o, invalid("request_id", "identifies one acquire: give WithRequestID to the call, not as a client default (every acquire would replay the first)")
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.err != nil {
		return o, o.err
	}
	if o.ttl > 0 && o.leaseID == 0 {
		if _, err := heartbeatPeriod(o.ttl, o.heartbeat, o.drift); err != nil {
			return o, err
		}
	}
	if !o.ownerSet {
		o.owner = defaultOwner()
	}
	return o, nil
}
