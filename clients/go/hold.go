package leasehold

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// State is where a hold stands under the client-deadline rule.
type State int

// The states of a hold.
const (
	// Held: the last renewal succeeded and the client deadline has not passed.
	Held State = iota
	// Jeopardy: renewals are failing, but the client deadline has not passed yet.
	Jeopardy
	// Lost: the deadline passed without a successful renewal, or the cluster said the
	// hold is gone. Lost() has fired.
	Lost
	// Released: Release was called.
	Released
)

// String returns "held", "jeopardy", "lost" or "released".
func (s State) String() string {
	switch s {
	case Held:
		return "held"
	case Jeopardy:
		return "jeopardy"
	case Lost:
		return "lost"
	case Released:
		return "released"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// kind is what a hold holds: it picks the routes that renew and release it.
type kind int

const (
	kindLock kind = iota
	kindSemaphore
	kindName
)

func (k kind) route() string {
	switch k {
	case kindSemaphore:
		return "semaphores"
	case kindName:
		return "names"
	}
	return "locks"
}

func (k kind) field() string {
	if k == kindName {
		return "name"
	}
	return "key"
}

// Lock is a granted lock (or semaphore slot, or name), renewed in the background every
// heartbeat period until Release, StopHeartbeat or its loss.
//
// The client considers itself holder until its client deadline, t_send + ttl × (1 −
// drift), where t_send is when the last successful refreshing request (the acquire, or
// a renewal) was sent (SPEC §2 rule 5). When that deadline passes without a successful
// renewal, or the cluster says the hold is gone, Lost() fires with a *LostError.
//
// A Lock that is neither released nor lost keeps renewing: Release it (or Close the
// client) when done.
type Lock struct {
	c       *Client
	kind    kind
	key     string
	owner   string
	token   uint64
	leaseID uint64
	value   string

	lost     chan error
	stop     chan struct{}
	stopOnce sync.Once

	mu         sync.Mutex
	cancel     context.CancelFunc // ends the running renewal loop
	loopDone   chan struct{}      // closed when it has ended
	clock      leaseClock
	state      State
	err        error
	released   bool // a Release has begun (and did not fail leaving the hold as it was)
	lostClosed bool
	stopped    bool
}

// grant is what the cluster granted.
type grant struct {
	key, owner     string
	token, leaseID uint64
	value          string
}

// startLock starts renewing a hold granted by a request sent at tSend.
func (c *Client) startLock(k kind, g grant, tSend time.Time, ttl, heartbeat time.Duration, drift float64) (*Lock, error) {
	l := &Lock{
		c: c, kind: k, key: g.key, owner: g.owner, token: g.token, leaseID: g.leaseID, value: g.value,
		lost:  make(chan error, 1),
		stop:  make(chan struct{}),
		clock: newLeaseClock(tSend, ttl, heartbeat, drift),
	}
	if err := c.track(l); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.startRenewal()
	l.mu.Unlock()
	return l, nil
}

// startRenewal starts the renewal loop (again, after a Release that failed). l.mu is
// held, and no loop runs.
func (l *Lock) startRenewal() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l.cancel, l.loopDone = cancel, done
	go l.renew(ctx, done)
}

// Key returns the key (or semaphore key, or name) held.
func (l *Lock) Key() string { return l.key }

// Owner returns the owner the hold was granted to.
func (l *Lock) Owner() string { return l.owner }

// Token returns the fencing token of the hold: pass it to downstream writes, which can
// then refuse a write carrying an older token than one they have seen.
func (l *Lock) Token() uint64 { return l.token }

// LeaseID returns the lease the hold lives under.
func (l *Lock) LeaseID() uint64 { return l.leaseID }

// Data returns the value stored with the hold (WithData).
func (l *Lock) Data() []byte { return []byte(l.value) }

// Lost returns a channel that receives the reason (a *LostError) when the hold is lost,
// and is then closed. It is closed without a value when the hold is released. Only one
// receiver gets the reason; Err returns it at any time after.
func (l *Lock) Lost() <-chan error { return l.lost }

// Err returns the reason the hold was lost (a *LostError), or nil.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// IsHeld reports whether the client still believes it holds: not lost, not released,
// and the client deadline has not passed.
func (l *Lock) IsHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return (l.state == Held || l.state == Jeopardy) && !l.clock.expired(time.Now())
}

// State returns Held, Jeopardy, Lost or Released. A hold whose deadline has passed is
// Lost, even in the instant before Lost() fires.
func (l *Lock) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	if (l.state == Held || l.state == Jeopardy) && l.clock.expired(time.Now()) {
		return Lost
	}
	return l.state
}

// ValidUntil returns the client deadline: t_send + ttl × (1 − drift) of the last request
// that refreshed the lease. Past it the client no longer believes it holds.
func (l *Lock) ValidUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.clock.deadline()
}

// StopHeartbeat stops renewing and keeps the hold until its lease runs out: nothing is
// released (and Client.Close leaves it). Lost() fires with LossHeartbeatStopped when the
// client deadline passes; the cluster expires the hold at the lease's TTL. A renewal
// already in flight may still complete. A later Release still releases.
func (l *Lock) StopHeartbeat() {
	l.stopOnce.Do(func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
		close(l.stop)
	})
}

func (l *Lock) heartbeatStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// Release stops renewing and releases the hold (unregisters a name). The cluster's
// refusal is returned as is: not_owner (errors.Is(err, ErrNotOwner)) if the hold was
// already gone; the hold is then released on this side too. A Release that fails
// otherwise (no node reachable, a timeout, ctx ended) leaves the hold as it was:
// renewed, and released by a later Release or by Client.Close. Once a Release has
// succeeded (or found the hold gone), another returns ErrAlreadyReleased, as does one
// called while a Release is under way.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return ErrAlreadyReleased
	}
	l.released = true
	cancel, loopDone := l.cancel, l.loopDone
	l.mu.Unlock()
	cancel()
	<-loopDone
	err := l.c.release(ctx, l.kind, l.key, l.owner, l.token)
	l.mu.Lock()
	if err != nil && !releaseIsFinal(err) && l.state != Lost {
		// The hold may still be there: keep it as it was (renewed, tracked for Close),
		// so that the release can be retried.
		l.released = false
		l.startRenewal()
		l.mu.Unlock()
		return err
	}
	if l.state != Lost {
		l.state = Released
		l.closeLost(nil)
	}
	l.mu.Unlock()
	l.c.untrack(l)
	return err
}

// closeLost sends err (when not nil) on the Lost channel and closes it, once. l.mu is held.
func (l *Lock) closeLost(err error) {
	if l.lostClosed {
		return
	}
	if err != nil {
		l.lost <- err
	}
	close(l.lost)
	l.lostClosed = true
}

// lose marks the hold lost and fires Lost().
func (l *Lock) lose(reason LossReason, cause error) {
	lostErr := &LostError{Key: l.key, Token: l.token, Reason: reason, Err: cause}
	l.mu.Lock()
	if l.state == Lost || l.state == Released {
		l.mu.Unlock()
		return
	}
	l.state, l.err = Lost, lostErr
	l.closeLost(lostErr)
	l.mu.Unlock()
	l.c.untrack(l)
	l.c.logf("%s", lostErr.describe())
}

// renew is the renewal loop: renew every heartbeat (sooner while renewals fail), move the
// client deadline after each successful renewal to its send time + ttl × (1 − drift),
// and end at the deadline, when the cluster says the hold is gone, or when ctx ends
// (Release).
func (l *Lock) renew(ctx context.Context, done chan struct{}) {
	defer close(done)
	var lastErr error
	for {
		l.mu.Lock()
		wake := l.clock.wake()
		l.mu.Unlock()
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-l.stop:
			timer.Stop()
			l.waitOutDeadline(ctx)
			return
		case <-timer.C:
		}
		select {
		case <-l.stop:
			l.waitOutDeadline(ctx)
			return
		default:
		}
		l.mu.Lock()
		expired, deadline, heartbeat := l.clock.expired(time.Now()), l.clock.deadline(), l.clock.heartbeat
		l.mu.Unlock()
		if expired {
			l.lose(LossUnreachable, lastErr)
			return
		}
		// A renewal may not outlive the deadline; each try at one endpoint gets half a
		// heartbeat, so that a paused node leaves time to try the others.
		rctx, cancel := context.WithDeadline(ctx, deadline)
		sent := time.Now()
		_, err := l.c.extend(rctx, l.kind, l.key, l.owner, l.token, renewalAttempt(heartbeat))
		cancel()
		if ctx.Err() != nil {
			return // released meanwhile
		}
		now := time.Now()
		var apiErr *Error
		switch {
		case err == nil:
			l.mu.Lock()
			l.clock.renewed(sent)
			recovered := l.state == Jeopardy
			if recovered {
				l.state = Held
			}
			l.mu.Unlock()
			if recovered {
				l.c.logf("renewed %q (token %d) again", l.key, l.token)
			}
		case holdIsGone(err):
			reason := LossExpired
			if errors.As(err, &apiErr) && apiErr.Reason == "stolen" {
				reason = LossStolen
			}
			l.lose(reason, err)
			return
		default:
			lastErr = err
			l.mu.Lock()
			l.clock.failed(now)
			expired = l.clock.expired(now)
			endangered := !expired && l.state == Held
			if endangered {
				l.state = Jeopardy
			}
			l.mu.Unlock()
			if expired {
				l.lose(LossUnreachable, err)
				return
			}
			if endangered {
				l.c.logf("renewing %q (token %d) failed, in jeopardy until the deadline in %v: %s", l.key, l.token, deadline.Sub(now).Round(time.Millisecond), errText(err))
			}
		}
	}
}

// renewalAttempt bounds one try of a renewal at one endpoint: half a heartbeat, at least
// 100 ms (the client's AttemptTimeout still caps it).
func renewalAttempt(heartbeat time.Duration) time.Duration {
	if d := heartbeat / 2; d > 100*time.Millisecond {
		return d
	}
	return 100 * time.Millisecond
}

// waitOutDeadline waits, after StopHeartbeat, for the client deadline and then reports
// the loss; Release (ctx) ends the wait first.
func (l *Lock) waitOutDeadline(ctx context.Context) {
	l.mu.Lock()
	deadline := l.clock.deadline()
	l.mu.Unlock()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
		l.lose(LossHeartbeatStopped, nil)
	}
}

// extend renews a hold (POST .../extend: a keepalive of its lease) and returns the TTL
// the renewal started (0 if the reply does not say).
func (c *Client) extend(ctx context.Context, k kind, key, owner string, token uint64, attempt time.Duration) (time.Duration, error) {
	path, err := keyPath(k.route(), k.field(), key)
	if err != nil {
		return 0, err
	}
	body := struct {
		Owner     string `json:"owner"`
		Token     uint64 `json:"token"`
		RequestID string `json:"request_id"`
	}{owner, token, c.NewRequestID()}
	var reply struct {
		TTLMs uint64 `json:"ttl_ms"`
	}
	if err := c.do(ctx, request{method: http.MethodPost, path: path + "/extend", body: body, attempt: attempt}, &reply); err != nil {
		return 0, err
	}
	return ms(reply.TTLMs), nil
}

// releaseIsFinal reports whether a failed release leaves nothing to release: the
// cluster said the hold is gone (404, 409).
func releaseIsFinal(err error) bool {
	var apiErr *Error
	return holdIsGone(err) || (errors.As(err, &apiErr) && (apiErr.Status == http.StatusNotFound || apiErr.Status == http.StatusConflict))
}

// release releases a hold by owner and token (DELETE ...?owner=&token=).
func (c *Client) release(ctx context.Context, k kind, key, owner string, token uint64) error {
	path, err := keyPath(k.route(), k.field(), key)
	if err != nil {
		return err
	}
	q := url.Values{
		"owner":      {owner},
		"token":      {strconv.FormatUint(token, 10)},
		"request_id": {c.NewRequestID()},
	}
	return c.do(ctx, request{method: http.MethodDelete, path: path, query: q}, nil)
}
