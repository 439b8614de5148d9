package leasehold

import (
	"math"
	"time"
)

// DefaultDrift is the assumed clock-rate difference between client and server (1 %,
// SPEC §2 rule 5).
const DefaultDrift = 0.01

// ClientDeadline returns tSend + ttl × (1 − drift): until then a client that sent a
// request refreshing a lease of this ttl at tSend (an acquire, or a keepalive that
// succeeded) may consider itself holder (SPEC §2 rule 5). Pass times from time.Now, so
// that the arithmetic is done on the monotonic clock.
func ClientDeadline(tSend time.Time, ttl time.Duration, drift float64) time.Time {
	return tSend.Add(validFor(ttl, drift))
}

// validFor is ttl × (1 − drift), rounded down to the nanosecond.
func validFor(ttl time.Duration, drift float64) time.Duration {
	return ttl - time.Duration(math.Ceil(float64(ttl)*drift))
}

// heartbeatPeriod checks a renewal period against a TTL: the default is ttl/3, and it
// must be above zero and below ttl/2; drift must be in [0, 0.5).
func heartbeatPeriod(ttl, heartbeat time.Duration, drift float64) (time.Duration, error) {
	if !(drift >= 0 && drift < 0.5) {
		return 0, invalid("drift", "must be in [0, 0.5), got %v", drift)
	}
	if heartbeat == 0 {
		heartbeat = ttl / 3
	}
	if heartbeat <= 0 || 2*heartbeat >= ttl {
		return 0, invalid("heartbeat_period", "must be above zero and below half the lease duration (%v), got %v", ttl/2, heartbeat)
	}
	return heartbeat, nil
}

// leaseClock is a hold's client deadline and renewal schedule: the deadline is
// tSend + validFor, where tSend is when the last request that refreshed the lease was
// sent; renewals are due a heartbeat after it, and sooner after a failure.
type leaseClock struct {
	tSend     time.Time
	validFor  time.Duration
	heartbeat time.Duration
	next      time.Time
}

func newLeaseClock(tSend time.Time, ttl, heartbeat time.Duration, drift float64) leaseClock {
	return leaseClock{tSend: tSend, validFor: validFor(ttl, drift), heartbeat: heartbeat, next: tSend.Add(heartbeat)}
}

// deadline is when the client stops believing it holds.
func (c *leaseClock) deadline() time.Time { return c.tSend.Add(c.validFor) }

// renewed records a successful renewal sent at sent: the deadline moves (never back),
// and the next renewal is due a heartbeat after it.
func (c *leaseClock) renewed(sent time.Time) {
	if sent.After(c.tSend) {
		c.tSend = sent
	}
	c.next = c.tSend.Add(c.heartbeat)
}

// failed records a failed renewal at now: the deadline stays, and the next try is due a
// quarter heartbeat later (at least 10 ms), but never after the deadline.
func (c *leaseClock) failed(now time.Time) {
	retry := c.heartbeat / 4
	if retry < 10*time.Millisecond {
		retry = 10 * time.Millisecond
	}
	c.next = now.Add(retry)
	if d := c.deadline(); c.next.After(d) {
		c.next = d
	}
}

// wake is when the renewal loop must act next: a renewal, or the deadline.
func (c *leaseClock) wake() time.Time {
	if d := c.deadline(); d.Before(c.next) {
		return d
	}
	return c.next
}

// expired reports whether the deadline has passed at now.
func (c *leaseClock) expired(now time.Time) bool { return !now.Before(c.deadline()) }
