//go:build unix

package leasehold

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The client conformance scenarios of clients/CONFORMANCE.md, against real clusters.

// C1: A acquires k; B's try-acquire fails at once with lock_held naming A.
func TestC1GrantAndConflict(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	a := newClient(t, cl.urls(), WithOwnerName("alice"))
	b := newClient(t, cl.urls(), WithOwnerName("bob"))
	key := testKey(t, "k")

	lock, err := a.AcquireLock(ctx, key, WithLeaseDuration(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if lock.Token() == 0 || lock.LeaseID() == 0 || lock.Owner() != "alice" || lock.Key() != key {
		t.Fatalf("grant: token %d lease %d owner %q key %q", lock.Token(), lock.LeaseID(), lock.Owner(), lock.Key())
	}
	if held, err := b.Has(ctx, key); err != nil || !held {
		t.Fatalf("Has = %v, %v; want true", held, err)
	}
	if !lock.IsHeld() || lock.State() != Held {
		t.Fatalf("IsHeld %v, state %v", lock.IsHeld(), lock.State())
	}

	start := time.Now()
	_, err = b.AcquireLock(ctx, key, WithLeaseDuration(5*time.Second))
	if took := time.Since(start); took > time.Second {
		t.Errorf("a try-acquire took %v", took)
	}
	if !errors.Is(err, ErrLockHeld) || !errors.Is(err, ErrLockNotGranted) {
		t.Fatalf("B's acquire: %v, want lock_held", err)
	}
	e := asError(t, err)
	if e.Status != 409 || e.Code != "lock_held" || !strings.Contains(e.Message, "alice") {
		t.Fatalf("the server's error: %+v", e)
	}
	if e.Holder == nil || e.Holder.Owner != "alice" || e.Holder.Token != lock.Token() {
		t.Fatalf("the error names holder %+v, want alice with token %d", e.Holder, lock.Token())
	}
	var notGranted *LockNotGrantedError
	if !errors.As(err, &notGranted) || notGranted.Key != key || notGranted.Wait != 0 {
		t.Fatalf("not a single-try LockNotGrantedError: %#v", err)
	}

	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held, err := b.Has(ctx, key); err != nil || held {
		t.Fatalf("after release Has = %v, %v", held, err)
	}
	if err, open := <-lock.Lost(); err != nil || open {
		t.Fatalf("Lost() after a release: %v, open %v; want closed without a reason", err, open)
	}
	if err := lock.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("a second release: %v", err)
	}
}

// C2: A holds; B then C queue; A's release grants B (larger token), B's grants C.
func TestC2FIFOBlockingAcquire(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 30*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "queue")
	a, err := c.AcquireLock(ctx, key, WithOwnerName("A"), WithLeaseDuration(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		lock *Lock
		err  error
	}
	queue := func(owner string, waiters int) chan result {
		ch := make(chan result, 1)
		go func() {
			l, err := c.AcquireLock(ctx, key, WithOwnerName(owner), WithLeaseDuration(5*time.Second), WithWait(20*time.Second))
			ch <- result{l, err}
		}()
		eventually(t, 5*time.Second, owner+" queued", func() bool {
			info, err := c.Get(ctx, key)
			return err == nil && info.Waiters == waiters
		})
		return ch
	}
	bDone := queue("B", 1)
	cDone := queue("C", 2)
	info, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Queue) != 2 || info.Queue[0].Owner != "B" || info.Queue[1].Owner != "C" || info.Queue[0].Position != 1 {
		t.Fatalf("queue %+v, want B then C", info.Queue)
	}

	releasedAt := time.Now()
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b := <-bDone
	if b.err != nil {
		t.Fatal(b.err)
	}
	// B's grant came after a wait: its client deadline counts from a renewal sent after
	// the grant, not from the acquire it sent before A released.
	if b.lock.ValidUntil().Before(ClientDeadline(releasedAt, 5*time.Second, DefaultDrift)) {
		t.Fatalf("B's deadline is %v before release + ttl×0.99: not re-anchored", ClientDeadline(releasedAt, 5*time.Second, DefaultDrift).Sub(b.lock.ValidUntil()))
	}
	if b.lock.Owner() != "B" || b.lock.Token() <= a.Token() || !b.lock.IsHeld() {
		t.Fatalf("B got owner %q token %d (A had %d), held %v", b.lock.Owner(), b.lock.Token(), a.Token(), b.lock.IsHeld())
	}
	select {
	case r := <-cDone:
		t.Fatalf("C was granted while B holds: %+v", r)
	default:
	}
	if info, err := c.Get(ctx, key); err != nil || info.Holder == nil || info.Holder.Owner != "B" || info.Waiters != 1 {
		t.Fatalf("after A's release: %+v, %v", info, err)
	}

	if err := b.lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-cDone
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.lock.Owner() != "C" || r.lock.Token() <= b.lock.Token() {
		t.Fatalf("C got owner %q token %d (B had %d)", r.lock.Owner(), r.lock.Token(), b.lock.Token())
	}
	if err := r.lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// C3: a lock with a 1 s TTL, held 3.5 s by the renewer, keeps its token and is never lost.
func TestC3Renewal(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "renewed")
	lock, err := c.AcquireLock(ctx, key, WithLeaseDuration(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	acquired := time.Now()
	firstDeadline := lock.ValidUntil()
	// Time passing is the subject: three and a half TTLs without touching the lock.
	select {
	case err := <-lock.Lost():
		t.Fatalf("lost while renewing: %v", err)
	case <-time.After(3500 * time.Millisecond):
	}
	if !lock.IsHeld() || lock.State() != Held {
		t.Fatalf("IsHeld %v, state %v", lock.IsHeld(), lock.State())
	}
	if d := lock.ValidUntil(); !d.After(firstDeadline) || d.Before(acquired.Add(3*time.Second)) {
		t.Fatalf("the client deadline moved from %v to %v after acquiring: not renewed", firstDeadline.Sub(acquired), d.Sub(acquired))
	}
	info, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Held || info.Holder.Token != lock.Token() || info.Holder.LeaseID != lock.LeaseID() {
		t.Fatalf("the server has %+v, want token %d", info.Holder, lock.Token())
	}
	if events, err := c.History(ctx, key); err != nil || len(events) != 1 || events[0].Event != "acquired" {
		t.Fatalf("history %+v, %v: want one acquisition", events, err)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held, err := c.Has(ctx, key); err != nil || held {
		t.Fatalf("after release Has = %v, %v", held, err)
	}
}

// C4a: revoking the lock's lease from outside makes the client report the loss, with a
// reason, within a few renewal periods.
func TestC4aLossByRevocation(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	admin := newClient(t, cl.urls())
	key := testKey(t, "revoked")
	heartbeat := 500 * time.Millisecond
	lock, err := c.AcquireLock(ctx, key, WithLeaseDuration(3*time.Second), WithHeartbeatPeriod(heartbeat))
	if err != nil {
		t.Fatal(err)
	}
	released, err := admin.RevokeLease(ctx, lock.LeaseID())
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 1 || released[0] != key {
		t.Fatalf("revocation released %v, want [%s]", released, key)
	}
	err = receiveLost(t, lock, 3*heartbeat+time.Second)
	var lost *LostError
	if !errors.As(err, &lost) || lost.Reason != LossExpired || lost.Key != key || lost.Token != lock.Token() {
		t.Fatalf("lost with %#v, want a LostError with reason expired", err)
	}
	if !errors.Is(err, ErrLost) || !errors.Is(err, ErrNotOwner) || errors.Is(err, ErrClientDeadline) {
		t.Fatalf("the reason %v should carry the server's not_owner", err)
	}
	if lock.IsHeld() || lock.State() != Lost || lock.Err() != err {
		t.Fatalf("after the loss: IsHeld %v, state %v, Err %v", lock.IsHeld(), lock.State(), lock.Err())
	}
}

// C4b: with every node paused, the client reports the loss by its own deadline
// (t_send + ttl × 0.99), and not before it.
func TestC4bLossByClientDeadline(t *testing.T) {
	cl := ownCluster(t, clusterOptions{})
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	ttl := time.Second
	lock, err := c.AcquireLock(ctx, testKey(t, "cut-off"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	// Let a renewal succeed first, so that the deadline is a renewal's.
	granted := lock.ValidUntil()
	eventually(t, 3*time.Second, "a renewal", func() bool { return lock.ValidUntil().After(granted) })
	pausedAt := time.Now()
	for i := range cl.nodes {
		cl.pause(i)
	}
	t.Cleanup(func() {
		for i := range cl.nodes {
			cl.resume(i)
		}
	})
	err = receiveLost(t, lock, 3*ttl)
	lostAt := time.Now()
	deadline := lock.ValidUntil()
	var lost *LostError
	if !errors.As(err, &lost) || lost.Reason != LossUnreachable || !errors.Is(err, ErrClientDeadline) {
		t.Fatalf("lost with %v, want reason unreachable by the client deadline", err)
	}
	if lostAt.Before(deadline) {
		t.Fatalf("lost %v before the client deadline", deadline.Sub(lostAt))
	}
	// No renewal can have been sent after the pause, so the deadline is at most the
	// pause + ttl × 0.99; and the loss is signalled promptly once it passes.
	if limit := ClientDeadline(pausedAt, ttl, DefaultDrift); deadline.After(limit) {
		t.Fatalf("the deadline %v is after pause + ttl×0.99: renewed after the pause?", deadline.Sub(limit))
	}
	late := lostAt.Sub(deadline)
	if late > 300*time.Millisecond {
		t.Fatalf("lost %v after the client deadline", late)
	}
	t.Logf("lost %v after the client deadline, which was %v after the pause", late, deadline.Sub(pausedAt))
	if lock.IsHeld() || lock.State() != Lost {
		t.Fatalf("IsHeld %v, state %v", lock.IsHeld(), lock.State())
	}
}

// C5: with node 1 killed, acquire, renewal and release go through the others.
func TestC5EndpointFailover(t *testing.T) {
	cl := ownCluster(t, clusterOptions{})
	ctx := ctxFor(t, 30*time.Second)
	c := newClient(t, cl.urls())
	ttl := 3 * time.Second
	before, err := c.AcquireLock(ctx, testKey(t, "before"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.current.Load(); got != 0 {
		t.Fatalf("the client used endpoint %d, want the first", got)
	}
	cl.kill(0)
	killedAt := time.Now()

	// Renewal: the lock taken before the kill is renewed through another node.
	eventually(t, 2*ttl, "a renewal after the kill", func() bool {
		return before.ValidUntil().After(ClientDeadline(killedAt, ttl, DefaultDrift))
	})
	// Acquire and release after the kill.
	key := testKey(t, "after")
	after, err := c.AcquireLock(ctx, key, WithLeaseDuration(ttl))
	if err != nil {
		t.Fatalf("acquire with node 1 dead: %v", err)
	}
	if got := c.current.Load(); got == 0 {
		t.Fatal("the client still names the dead endpoint as current")
	}
	granted := after.ValidUntil()
	eventually(t, 2*ttl, "a renewal of the new lock", func() bool { return after.ValidUntil().After(granted) })
	for _, l := range []*Lock{before, after} {
		select {
		case err := <-l.Lost():
			t.Fatalf("%s lost: %v", l.Key(), err)
		default:
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("release of %s with node 1 dead: %v", l.Key(), err)
		}
	}
	if held, err := c.Has(ctx, key); err != nil || held {
		t.Fatalf("after release Has = %v, %v", held, err)
	}
}

// C6: an acquire whose reply is lost is retried with the same request id: the retry
// returns the same hold, the key has one holder, and one release frees it.
func TestC6RetriedAcquire(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	proxy := dropReplies(t, cl.urls()[0])
	// The first endpoint forwards the request and drops the reply: the client retries
	// the same acquire (same request id) at the second.
	c := newClient(t, []string{proxy.url, cl.urls()[1]})
	key := testKey(t, "once")
	id := c.NewRequestID()
	ttl := 1500 * time.Millisecond
	first, err := c.AcquireLock(ctx, key, WithRequestID(id), WithOwnerName("retrier"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	if n := proxy.dropped.Load(); n != 1 {
		t.Fatalf("%d replies dropped, want 1: the retry did not happen as planned", n)
	}
	// Sending the same acquire again (same id) returns the same hold, not a conflict.
	direct := newClient(t, cl.urls())
	again, err := direct.AcquireLock(ctx, key, WithRequestID(id), WithOwnerName("retrier"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatalf("the same acquire again: %v", err)
	}
	if again.Token() != first.Token() || again.LeaseID() != first.LeaseID() {
		t.Fatalf("retry got token %d lease %d, first %d lease %d", again.Token(), again.LeaseID(), first.Token(), first.LeaseID())
	}
	info, err := direct.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Held || info.Holder.Token != first.Token() || info.Waiters != 0 {
		t.Fatalf("state %+v", info)
	}
	if events, err := direct.History(ctx, key); err != nil || len(events) != 1 {
		t.Fatalf("history %+v, %v: want exactly one acquisition", events, err)
	}
	leases, err := direct.ListLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	holding := 0
	for _, l := range leases {
		for _, k := range l.Locks {
			if k == key {
				holding++
			}
		}
	}
	if holding != 1 {
		t.Fatalf("%d leases hold %s, want 1 (leaked or duplicated)", holding, key)
	}

	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held, err := direct.Has(ctx, key); err != nil || held {
		t.Fatalf("one release left Has = %v, %v", held, err)
	}
	if _, err := direct.GetLease(ctx, first.LeaseID()); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("the implicit lease outlived the release: %v", err)
	}
	// The second handle of the same hold learns that it is gone.
	if err := receiveLost(t, again, 3*ttl); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("the duplicate handle lost with %v", err)
	}
}

// replyDropper forwards each HTTP request to a node and closes the connection instead
// of returning the reply: the request acted, but its caller never learns how. With a
// limit, only the first limit replies are dropped and the later ones are returned.
type replyDropper struct {
	url     string
	limit   int64 // 0: drop every reply
	replies atomic.Int64
	dropped atomic.Int64
}

func dropReplies(t *testing.T, target string) *replyDropper {
	t.Helper()
	return dropFirstReplies(t, target, 0)
}

// dropFirstReplies is dropReplies for the first n replies (0: all of them).
func dropFirstReplies(t *testing.T, target string, n int64) *replyDropper {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &replyDropper{url: "http://" + l.Addr().String(), limit: n}
	host := strings.TrimPrefix(target, "http://")
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				node, err := net.Dial("tcp", host)
				if err != nil {
					return
				}
				defer node.Close()
				if req.Write(node) != nil {
					return
				}
				resp, err := http.ReadResponse(bufio.NewReader(node), req)
				if err != nil {
					return
				}
				reply, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					return
				}
				if p.limit == 0 || p.replies.Add(1) <= p.limit {
					p.dropped.Add(1)
					return
				}
				resp.Body = io.NopCloser(bytes.NewReader(reply))
				resp.Close = true
				_ = resp.Write(conn)
			}()
		}
	}()
	return p
}

// C7: two candidates; the first leads; when it resigns, the second leads, and whereis
// and observe name it.
func TestC7ElectionHandover(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 30*time.Second)
	urls := cl.urls()
	first := newClient(t, []string{urls[0]}, WithOwnerName("candidate-1"))
	second := newClient(t, []string{urls[1]}, WithOwnerName("candidate-2"))
	watcher := newClient(t, []string{urls[2]})
	name := testKey(t, "svc-leader")
	opts := []LockOption{WithLeaseDuration(3 * time.Second), WithWait(10 * time.Second)}

	leader, err := first.Campaign(ctx, name, "10.0.0.1:8080", opts...)
	if err != nil {
		t.Fatal(err)
	}
	observeCtx, observeCancel := context.WithCancel(ctx)
	defer observeCancel()
	changes := watcher.Observe(observeCtx, name)
	if now := nextChange(t, changes); !now.Registered || now.Owner != "candidate-1" || now.Value != "10.0.0.1:8080" {
		t.Fatalf("observe starts with %+v", now)
	}

	type result struct {
		l   *Leadership
		err error
	}
	elected := make(chan result, 1)
	go func() {
		l, err := second.Campaign(ctx, name, "10.0.0.2:8080", opts...)
		elected <- result{l, err}
	}()
	eventually(t, 5*time.Second, "the second candidate queued", func() bool {
		info, err := watcher.Lookup(ctx, name)
		return err == nil && len(info.Queue) == 1 && info.Queue[0].Owner == "candidate-2"
	})
	if info, err := watcher.Lookup(ctx, name); err != nil || info.Owner != "candidate-1" || info.Token != leader.Token() {
		t.Fatalf("whereis before the handover: %+v, %v", info, err)
	}

	resignedAt := time.Now()
	if err := leader.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-elected
	if r.err != nil {
		t.Fatal(r.err)
	}
	next := r.l
	if next.Token() <= leader.Token() || next.Owner() != "candidate-2" || next.Value() != "10.0.0.2:8080" || !next.IsHeld() {
		t.Fatalf("the second leader: owner %q token %d (first %d) value %q", next.Owner(), next.Token(), leader.Token(), next.Value())
	}
	if next.ValidUntil().Before(ClientDeadline(resignedAt, 3*time.Second, DefaultDrift)) {
		t.Fatal("the elected campaign's deadline was not re-anchored after the wait")
	}
	if info, err := watcher.Lookup(ctx, name); err != nil || info.Owner != "candidate-2" || info.Value != "10.0.0.2:8080" || info.Token != next.Token() {
		t.Fatalf("whereis after the handover: %+v, %v", info, err)
	}
	// The handover is one replicated step: observe sees the new leader, with the vacancy
	// it passed through.
	now := nextChange(t, changes)
	if !now.Registered || now.Owner != "candidate-2" || now.Token != next.Token() {
		t.Fatalf("after the handover, observe says %+v", now)
	}
	if now.Vacated == nil || now.Vacated.Owner != "candidate-1" || now.Vacated.Token != leader.Token() || now.Vacated.Reason != "released" {
		t.Fatalf("the handover's vacancy: %+v", now.Vacated)
	}

	// A new value is observed too, and resigning leaves the name vacant.
	if err := next.Proclaim(ctx, "10.0.0.2:9090"); err != nil {
		t.Fatal(err)
	}
	if now := nextChange(t, changes); now.Owner != "candidate-2" || now.Value != "10.0.0.2:9090" {
		t.Fatalf("after proclaim, observe says %+v", now)
	}
	if err := next.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if now := nextChange(t, changes); now.Registered || now.Vacated == nil || now.Vacated.Owner != "candidate-2" {
		t.Fatalf("after the last resignation, observe says %+v", now)
	}
	observeCancel()
	for range changes {
	} // closed when its context ends
	if _, err := watcher.Lookup(ctx, name); !errors.Is(err, ErrNameNotFound) {
		t.Fatalf("whereis of a vacant name: %v", err)
	}
}

// C8: an empty owner, a TTL of 0 and a key with a control character are refused with
// the server's invalid_argument, its message naming the field.
func TestC8BadInput(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "bad")
	cases := []struct {
		field string
		key   string
		opts  []LockOption
	}{
		{"owner", key, []LockOption{WithOwnerName("")}},
		{"ttl_ms", key, []LockOption{WithLeaseDuration(0)}},
		{"key", key + "\x01", nil},
	}
	for _, tc := range cases {
		l, err := c.AcquireLock(ctx, tc.key, tc.opts...)
		if err == nil {
			_ = l.Release(ctx)
			t.Errorf("%s: granted", tc.field)
			continue
		}
		e := asError(t, err)
		if e.Status != 400 || e.Code != "invalid_argument" || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %+v, want the server's 400 invalid_argument", tc.field, e)
		}
		if !strings.HasPrefix(e.Message, tc.field+": ") {
			t.Errorf("%s: the message %q does not name the field", tc.field, e.Message)
		}
	}
	if held, err := c.Has(ctx, key); err != nil || held {
		t.Fatalf("Has = %v, %v after refused acquires", held, err)
	}
}

// nextChange receives the next state from an Observe channel, failing after 5 s.
func nextChange(t *testing.T, changes <-chan NameInfo) NameInfo {
	t.Helper()
	select {
	case now, ok := <-changes:
		if !ok {
			t.Fatal("the observe channel closed")
		}
		return now
	case <-time.After(5 * time.Second):
		t.Fatal("observe reported no change within 5s")
	}
	return NameInfo{}
}
