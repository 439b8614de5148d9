package leasehold

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// acquireBody is the body of a lock acquire, a semaphore acquire and a name
// registration (each takes the fields that apply to it).
type acquireBody struct {
	Owner       string  `json:"owner"`
	Limit       *int    `json:"limit,omitempty"`
	TTLMs       *int64  `json:"ttl_ms,omitempty"`
	LeaseID     *uint64 `json:"lease_id,omitempty"`
	WaitMs      *int64  `json:"wait_ms,omitempty"`
	Value       *string `json:"value,omitempty"`
	LockDelayMs *int64  `json:"lock_delay_ms,omitempty"`
	RequestID   string  `json:"request_id"`
}

// AcquireLock acquires the lock key and renews it in the background until Release.
//
// Without WithWait it tries once: if the key is held, the error is a
// *LockNotGrantedError wrapping the server's lock_held, which names the holder
// (errors.Is(err, ErrLockNotGranted) and errors.Is(err, ErrLockHeld) both hold). With
// WithWait(d) it queues FIFO for up to d. A grant after a wait, under an existing lease
// (WithLease) or for a request id the caller gave (WithRequestID) re-anchors the client
// deadline with an immediate renewal before it is returned; if that renewal finds the
// hold gone (a retried acquire replaying a grant that has ended since), the error
// matches ErrNotOwner or ErrLeaseNotFound and no Lock is returned.
func (c *Client) AcquireLock(ctx context.Context, key string, opts ...LockOption) (*Lock, error) {
	o, err := c.options(lockDefaults, opts)
	if err != nil {
		return nil, err
	}
	l, _, err := c.acquire(ctx, kindLock, key, 0, o, o.requestID)
	return l, err
}

// acquire sends one acquire of key and, once granted, starts renewing it. requestID is
// the caller's (WithRequestID, or a campaign's kept across its retries), or "" for a
// fresh one. granted reports whether the cluster granted the request, also when the
// acquire then failed: its request id is used up.
func (c *Client) acquire(ctx context.Context, k kind, key string, limit int, o lockOptions, requestID string) (l *Lock, granted bool, err error) {
	if c.isClosed() {
		return nil, false, ErrClientClosed
	}
	path, err := keyPath(k.route(), k.field(), key)
	if err != nil {
		return nil, false, err
	}
	// A request id from the caller may have been sent before: the reply may then be the
	// dedupe window's replay of a grant made for an earlier send.
	replayable := requestID != ""
	if !replayable {
		requestID = c.NewRequestID()
	}
	wait := waitWithin(ctx, o.wait)
	body := acquireBody{Owner: o.owner, Value: o.value, RequestID: requestID}
	if o.leaseID != 0 {
		body.LeaseID = &o.leaseID
	} else {
		ttl := toMs(o.ttl)
		body.TTLMs = &ttl
	}
	if wait > 0 {
		w := toMs(wait)
		body.WaitMs = &w
	}
	if k == kindSemaphore {
		body.Limit = &limit
	}
	if o.lockDelay != 0 {
		d := toMs(o.lockDelay)
		body.LockDelayMs = &d
	}
	method := http.MethodPost
	if k == kindName {
		method = http.MethodPut
	}
	var reply struct {
		Key     string `json:"key"`
		Name    string `json:"name"`
		Owner   string `json:"owner"`
		Token   uint64 `json:"token"`
		LeaseID uint64 `json:"lease_id"`
		TTLMs   uint64 `json:"ttl_ms"`
		// A name's grant has no ttl_ms; its expires_in_ms is the TTL at the grant.
		ExpiresInMs uint64  `json:"expires_in_ms"`
		Value       *string `json:"value"`
	}
	// Sent before the first try: the client's own retries of this call (same request id)
	// may get the grant of an earlier try, which the server made after this.
	tSend := time.Now()
	if err := c.do(ctx, request{method: method, path: path, body: body, wait: wait}, &reply); err != nil {
		var apiErr *Error
		if errors.As(err, &apiErr) && (apiErr.Code == "lock_held" || apiErr.Code == "name_taken" || apiErr.Code == "semaphore_full") {
			return nil, false, &LockNotGrantedError{Key: key, Wait: wait, Err: apiErr}
		}
		return nil, false, err
	}
	g := grant{key: key, owner: reply.Owner, token: reply.Token, leaseID: reply.LeaseID, value: str(reply.Value)}
	if k == kindSemaphore && o.value != nil {
		g.value = *o.value // a slot's reply does not repeat the value
	}
	// The TTL the cluster applies (a shared lease's, under WithLease).
	ttl := ms(reply.TTLMs)
	if ttl == 0 {
		ttl = ms(reply.ExpiresInMs)
	}
	// Re-anchor the client deadline with an immediate renewal wherever the acquire did
	// not itself start the lease's TTL afresh after tSend (SPEC §2 rule 5):
	//   - after a wait: the server kept the waiting lease alive, from before the grant;
	//   - under an existing lease: the acquire attaches to it without renewing it, and
	//     its TTL runs from its last renewal, which may be long before tSend;
	//   - with the caller's request id: the reply may replay a grant made for an earlier
	//     send, before tSend, whose hold may even have ended since (the renewal says so).
	if wait > 0 || o.leaseID != 0 || replayable {
		sent := time.Now()
		renewedTTL, err := c.extend(ctx, k, key, g.owner, g.token, 0)
		if err != nil {
			if holdIsGone(err) {
				return nil, true, fmt.Errorf("leasehold: %q was granted (token %d), but the hold has ended since: %w", key, g.token, err)
			}
			c.releaseInBackground(k, g)
			return nil, true, err
		}
		tSend = sent
		if renewedTTL > 0 {
			ttl = renewedTTL // the TTL that renewal started, after sent
		}
	}
	// Never more than asked for, so that a fraction of a millisecond rounded up on the
	// wire does not lengthen the client deadline.
	if o.leaseID == 0 && o.ttl > 0 && o.ttl < ttl {
		ttl = o.ttl
	}
	heartbeat, err := heartbeatPeriod(ttl, o.heartbeat, o.drift)
	if err != nil {
		c.releaseInBackground(k, g)
		return nil, true, err
	}
	l, err = c.startLock(k, g, tSend, ttl, heartbeat, o.drift)
	if err != nil {
		c.releaseInBackground(k, g)
		return nil, true, err
	}
	return l, true, nil
}

// releaseInBackground releases a grant the caller will not get, best effort.
func (c *Client) releaseInBackground(k kind, g grant) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		if err := c.release(ctx, k, g.key, g.owner, g.token); err != nil {
			c.logf("releasing %q (token %d) after a failed acquire: %v", g.key, g.token, errText(err))
		}
	}()
}

// Get reads the lock key: its holder (Holder is nil when free) and its queue. It is a
// linearizable read through the leader.
func (c *Client) Get(ctx context.Context, key string) (*LockInfo, error) {
	path, err := keyPath("locks", "key", key)
	if err != nil {
		return nil, err
	}
	var w wireLockState
	if err := c.do(ctx, request{method: http.MethodGet, path: path}, &w); err != nil {
		return nil, err
	}
	return w.info(), nil
}

// Has reports whether the lock key is held by anyone.
func (c *Client) Has(ctx context.Context, key string) (bool, error) {
	info, err := c.Get(ctx, key)
	if err != nil {
		return false, err
	}
	return info.Held, nil
}

// ReleaseLock releases the lock key held by owner with this fencing token, without a
// *Lock (for example from another process). It fails with not_owner if that hold is
// gone.
func (c *Client) ReleaseLock(ctx context.Context, key, owner string, token uint64) error {
	return c.release(ctx, kindLock, key, owner, token)
}

// ForceReleaseLock ends the current hold of key whoever owns it (an operator's action;
// needs the admin role with auth on). The next waiter is granted at once, and the former
// holder's client loses the lock with LossStolen at its next renewal. It returns the
// owner and token of the hold it ended.
func (c *Client) ForceReleaseLock(ctx context.Context, key string) (owner string, token uint64, err error) {
	path, err := keyPath("locks", "key", key)
	if err != nil {
		return "", 0, err
	}
	var reply struct {
		Owner string `json:"owner"`
		Token uint64 `json:"token"`
	}
	q := url.Values{"force": {"true"}, "request_id": {c.NewRequestID()}}
	if err := c.do(ctx, request{method: http.MethodDelete, path: path, query: q}, &reply); err != nil {
		return "", 0, err
	}
	return reply.Owner, reply.Token, nil
}

// maxPoll bounds one long-poll request; the calls that wait longer send another.
const maxPoll = 60 * time.Second

// WaitForRelease blocks until the lock key is free (long-polling GET
// /v1/locks/{key}/wait) and says how the last hold ended. It returns at once if the key
// is free. It waits until ctx ends, then returns ctx's error.
func (c *Client) WaitForRelease(ctx context.Context, key string) (*Release, error) {
	path, err := keyPath("locks", "key", key)
	if err != nil {
		return nil, err
	}
	for {
		wait := waitWithin(ctx, maxPoll)
		if wait == 0 {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var reply struct {
			Released bool    `json:"released"`
			Reason   *string `json:"reason"`
			Owner    *string `json:"owner"`
			Token    uint64  `json:"token"`
			AtMs     uint64  `json:"at_ms"`
		}
		q := url.Values{"wait_ms": {strconv.FormatInt(toMs(wait), 10)}}
		if err := c.do(ctx, request{method: http.MethodGet, path: path + "/wait", query: q, wait: wait}, &reply); err != nil {
			return nil, err
		}
		if reply.Released {
			return &Release{Reason: str(reply.Reason), Owner: str(reply.Owner), Token: reply.Token, At: msTime(reply.AtMs)}, nil
		}
	}
}

// ListLocks returns the held locks whose keys start with prefix ("" for all), in key
// order.
func (c *Client) ListLocks(ctx context.Context, prefix string) ([]Holder, error) {
	return list(func(after string) ([]Holder, string, error) {
		var page struct {
			Locks     []wireHolder `json:"locks"`
			NextAfter string       `json:"next_after"`
		}
		q := url.Values{"prefix": {prefix}}
		if after != "" {
			q.Set("after", after)
		}
		err := c.do(ctx, request{method: http.MethodGet, path: "/v1/locks", query: q}, &page)
		return holders(page.Locks), page.NextAfter, err
	})
}

// History returns the lock key's recent events (acquired, released, expired, revoked,
// stolen), newest first: the answer to "why did my lock go away?".
func (c *Client) History(ctx context.Context, key string) ([]HistoryEvent, error) {
	path, err := keyPath("locks", "key", key)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Events []wireHistoryEvent `json:"events"`
	}
	if err := c.do(ctx, request{method: http.MethodGet, path: path + "/history"}, &reply); err != nil {
		return nil, err
	}
	events := make([]HistoryEvent, 0, len(reply.Events))
	for _, e := range reply.Events {
		events = append(events, HistoryEvent{
			Event: e.Event, Owner: e.Owner, Token: e.Token, At: msTime(e.AtMs),
			Held: ms(e.HeldMs), Waited: ms(e.WaitedMs), Principal: e.Principal,
		})
	}
	return events, nil
}

// Expired returns the cluster's most recent expirations (locks, names and semaphore
// slots), newest first.
func (c *Client) Expired(ctx context.Context) ([]Expiration, error) {
	var reply struct {
		Expired []struct {
			Kind        string `json:"kind"`
			Key         string `json:"key"`
			Owner       string `json:"owner"`
			Token       uint64 `json:"token"`
			ExpiredAtMs uint64 `json:"expired_at_ms"`
		} `json:"expired"`
	}
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/expired"}, &reply); err != nil {
		return nil, err
	}
	out := make([]Expiration, 0, len(reply.Expired))
	for _, e := range reply.Expired {
		out = append(out, Expiration{Kind: e.Kind, Key: e.Key, Owner: e.Owner, Token: e.Token, ExpiredAt: msTime(e.ExpiredAtMs)})
	}
	return out, nil
}
