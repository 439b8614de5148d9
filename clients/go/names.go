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

// Leadership is a held name: leadership won by Campaign (or a registration by Register),
// renewed in the background like a Lock, whose methods it has. Lost() fires if the
// leadership is lost.
type Leadership struct {
	*Lock

	mu    sync.Mutex
	value string
}

// Name returns the name held.
func (l *Leadership) Name() string { return l.Key() }

// Value returns the value the leader publishes (the campaign's, or the last proclaimed).
func (l *Leadership) Value() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.value
}

// Data returns the published value.
func (l *Leadership) Data() []byte { return []byte(l.Value()) }

// Resign gives up the name (unregisters it); the next queued candidate is elected in the
// same replicated step.
func (l *Leadership) Resign(ctx context.Context) error { return l.Release(ctx) }

// Proclaim publishes a new value without giving up the name.
func (l *Leadership) Proclaim(ctx context.Context, value string) error {
	path, err := keyPath("names", "name", l.Key())
	if err != nil {
		return err
	}
	body := struct {
		Owner     string `json:"owner"`
		Token     uint64 `json:"token"`
		Value     string `json:"value"`
		RequestID string `json:"request_id"`
	}{l.Owner(), l.Token(), value, l.c.NewRequestID()}
	if err := l.c.do(ctx, request{method: http.MethodPatch, path: path, body: body}, nil); err != nil {
		return err
	}
	l.mu.Lock()
	l.value = value
	l.mu.Unlock()
	return nil
}

// Campaign runs for leader of name, publishing value (for example this instance's
// address): it registers the name, or queues FIFO behind the other candidates, and
// returns once elected. It goes on until elected or ctx ends; WithWait bounds each
// queued request (default DefaultCampaignWait), and the default lease duration is
// DefaultElectionLeaseDuration. The leadership is renewed until Resign or its loss.
//
// A queued request that fails as unavailable or timeout (its reply may have been lost
// after the cluster acted on it) is sent again after a pause with the same request id,
// so that it gets its own grant or queue entry back; a new request id is used only
// after a wait that ran out (name_taken) or a grant that could not be kept.
func (c *Client) Campaign(ctx context.Context, name, value string, opts ...LockOption) (*Leadership, error) {
	o, err := c.options(electionDefaults, append([]LockOption{WithData(value)}, opts...))
	if err != nil {
		return nil, err
	}
	if o.wait <= 0 {
		o.wait = DefaultCampaignWait
	}
	heartbeat := o.heartbeat
	if heartbeat == 0 {
		heartbeat = o.ttl / 3
	}
	pause := 500 * time.Millisecond
	if heartbeat > 0 && heartbeat < pause {
		pause = heartbeat
	}
	// One request id per queued request, kept when the request is sent again after a
	// failure that may have hidden its outcome: a grant (or queue entry) that raced a
	// lost reply is then this campaign's own, not a ghost holder it would queue behind
	// until its TTL ran out. Every grant is re-anchored (acquire does so for a request
	// id it is given), so a replayed grant is safe, and one that has ended is refused.
	requestID := o.requestID
	if requestID == "" {
		requestID = c.NewRequestID()
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l, granted, err := c.acquire(ctx, kindName, name, 0, o, requestID)
		if err == nil {
			return &Leadership{Lock: l, value: l.value}, nil
		}
		if granted {
			// The grant failed after the fact (it had ended, or its re-anchoring failed
			// and it was released): the id is used up.
			requestID = c.NewRequestID()
		}
		switch {
		case granted && holdIsGone(err):
			c.logf("campaign for %q: %v; running again", name, errText(err))
		case errors.Is(err, ErrNameTaken):
			// The wait ran out with another leader in place: queue again, as a new request.
			requestID = c.NewRequestID()
		case errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTimeout):
			c.logf("campaign for %q: %v; trying again", name, errText(err))
			if !sleep(ctx, pause) {
				return nil, ctx.Err()
			}
		default:
			return nil, err
		}
	}
}

// Register takes name for owner (WithOwnerName) with value, or fails with a
// *LockNotGrantedError wrapping name_taken if someone holds it (after queueing up to
// WithWait, if given). The registration is renewed until Resign or its loss.
func (c *Client) Register(ctx context.Context, name, value string, opts ...LockOption) (*Leadership, error) {
	o, err := c.options(electionDefaults, append([]LockOption{WithData(value)}, opts...))
	if err != nil {
		return nil, err
	}
	l, _, err := c.acquire(ctx, kindName, name, 0, o, o.requestID)
	if err != nil {
		return nil, err
	}
	return &Leadership{Lock: l, value: l.value}, nil
}

// Lookup returns who holds name now (whereis), through the leader. A free name is an
// error matching ErrNameNotFound.
func (c *Client) Lookup(ctx context.Context, name string) (*NameInfo, error) {
	path, err := keyPath("names", "name", name)
	if err != nil {
		return nil, err
	}
	var w wireName
	if err := c.do(ctx, request{method: http.MethodGet, path: path}, &w); err != nil {
		return nil, err
	}
	return w.info(), nil
}

// Resign unregisters name held by owner with this fencing token, without a Leadership
// (for example from another process).
func (c *Client) Resign(ctx context.Context, name, owner string, token uint64) error {
	return c.release(ctx, kindName, name, owner, token)
}

// ListNames returns the registered names starting with prefix ("" for all), in order.
func (c *Client) ListNames(ctx context.Context, prefix string) ([]NameInfo, error) {
	return list(func(after string) ([]NameInfo, string, error) {
		var page struct {
			Names     []wireName `json:"names"`
			NextAfter string     `json:"next_after"`
		}
		q := url.Values{"prefix": {prefix}}
		if after != "" {
			q.Set("after", after)
		}
		err := c.do(ctx, request{method: http.MethodGet, path: "/v1/names", query: q}, &page)
		out := make([]NameInfo, 0, len(page.Names))
		for _, n := range page.Names {
			out = append(out, *n.info())
		}
		return out, page.NextAfter, err
	})
}

// Observe watches name's leader with blocking queries and sends the name's state on the
// returned channel: first the current state, then every change of leader or value (a new
// leader, with Vacated saying how the previous term ended; a proclaimed value; a
// vacancy, with Registered false). Changes of the queue alone are not sent. The channel
// is closed when ctx ends, or on an error retrying cannot fix (a bad name, a refused
// token), which is logged. A slow receiver delays the next query; it then sees the
// latest state, not every intermediate one.
func (c *Client) Observe(ctx context.Context, name string) <-chan NameInfo {
	ch := make(chan NameInfo)
	go func() {
		defer close(ch)
		path, err := keyPath("names", "name", name)
		if err != nil {
			c.logf("observe %q: %v", name, errText(err))
			return
		}
		var index uint64
		var last leaderOf
		first := true
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			var wait time.Duration
			if !first {
				if wait = waitWithin(ctx, maxPoll); wait == 0 {
					return
				}
			}
			q := url.Values{"index": {strconv.FormatUint(index, 10)}, "wait_ms": {strconv.FormatInt(toMs(wait), 10)}}
			var w wireName
			if err := c.do(ctx, request{method: http.MethodGet, path: path, query: q, wait: wait}, &w); err != nil {
				if ctx.Err() != nil {
					return
				}
				var apiErr *Error
				if errors.As(err, &apiErr) && apiErr.Status >= 400 && apiErr.Status < 500 && apiErr.Status != http.StatusTooManyRequests {
					c.logf("observe %q stopped: %v", name, errText(err))
					return
				}
				c.logf("observe %q: %v; retrying in %v", name, errText(err), backoff)
				if !sleep(ctx, backoff) {
					return
				}
				if backoff *= 2; backoff > 2*time.Second {
					backoff = 2 * time.Second
				}
				continue
			}
			backoff = 100 * time.Millisecond
			info := w.info()
			if now := leaderOfName(info); first || now != last {
				select {
				case ch <- *info:
				case <-ctx.Done():
					return
				}
				last = now
			}
			index, first = w.Index, false
		}
	}()
	return ch
}

// leaderOf is what Observe reports changes of: who leads, with which value.
type leaderOf struct {
	registered bool
	token      uint64
	value      string
}

func leaderOfName(n *NameInfo) leaderOf {
	return leaderOf{registered: n.Registered, token: n.Token, value: n.Value}
}
