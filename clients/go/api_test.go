//go:build unix

package leasehold

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// The rest of the API against the shared cluster: what the Rust guard tests
// (cluster-tests/tests/guards.rs) assert beyond the conformance scenarios, and the
// calls that have no scenario of their own.

// StopHeartbeat keeps the hold until it expires: nothing is released, Lost() fires at the
// client deadline (not before), and the cluster expires the hold.
func TestStopHeartbeatKeepsTheHoldUntilItExpires(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "heartbeat")
	ttl := time.Second
	lock, err := c.AcquireLock(ctx, key, WithLeaseDuration(ttl), WithData("payload"))
	if err != nil {
		t.Fatal(err)
	}
	lock.StopHeartbeat()
	deadline := lock.ValidUntil()
	if !lock.IsHeld() || lock.State() != Held {
		t.Fatalf("held until the deadline: IsHeld %v, state %v", lock.IsHeld(), lock.State())
	}
	// Close leaves a hold whose heartbeat was stopped.
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	err = receiveLost(t, lock, 3*ttl)
	if now := time.Now(); now.Before(deadline) {
		t.Fatalf("lost %v before the client deadline", deadline.Sub(now))
	}
	var lost *LostError
	if !errors.As(err, &lost) || lost.Reason != LossHeartbeatStopped || !errors.Is(err, ErrClientDeadline) {
		t.Fatalf("lost with %v", err)
	}
	eventually(t, 3*ttl, "the cluster expires the hold", func() bool {
		held, err := c.Has(ctx, key)
		return err == nil && !held
	})
	events, err := c.History(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Event != "expired" || events[0].Token != lock.Token() || events[0].Held < ttl {
		t.Fatalf("history %+v: want acquired, then expired after the whole TTL", events)
	}
	expired, err := c.Expired(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range expired {
		found = found || (e.Key == key && e.Kind == "lock" && e.Token == lock.Token() && !e.ExpiredAt.IsZero())
	}
	if !found {
		t.Fatalf("%s is not among the expirations %+v", key, expired)
	}
}

// A blocking acquire whose wait runs out fails with ErrLockNotGranted, and leaves no
// queue entry behind.
func TestAWaitThatRunsOutIsNotGranted(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "busy")
	holder, err := c.AcquireLock(ctx, key, WithOwnerName("holder"), WithLeaseDuration(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	wait := 600 * time.Millisecond
	start := time.Now()
	_, err = c.AcquireLock(ctx, key, WithOwnerName("waiter"), WithWait(wait))
	took := time.Since(start)
	var notGranted *LockNotGrantedError
	if !errors.As(err, &notGranted) || !errors.Is(err, ErrLockNotGranted) || !errors.Is(err, ErrLockHeld) {
		t.Fatalf("got %v, want a LockNotGrantedError", err)
	}
	if notGranted.Wait != wait || notGranted.Err.Holder == nil || notGranted.Err.Holder.Owner != "holder" {
		t.Fatalf("the error %+v, holder %+v", notGranted, notGranted.Err.Holder)
	}
	if took < wait-50*time.Millisecond {
		t.Fatalf("gave up after %v, before the %v wait", took, wait)
	}
	if info, err := c.Get(ctx, key); err != nil || info.Waiters != 0 || info.Holder.Owner != "holder" {
		t.Fatalf("after the wait: %+v, %v", info, err)
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// WaitForRelease blocks while the lock is held and reports how the hold ended.
func TestWaitForReleaseReportsTheRelease(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "awaited")
	lock, err := c.AcquireLock(ctx, key, WithOwnerName("worker"), WithLeaseDuration(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *Release, 1)
	go func() {
		r, err := c.WaitForRelease(ctx, key)
		if err != nil {
			t.Error(err)
		}
		done <- r
	}()
	// Time passing is the point: the wait must still be blocked.
	select {
	case r := <-done:
		t.Fatalf("returned %+v while the lock is held", r)
	case <-time.After(300 * time.Millisecond):
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r == nil || r.Reason != "released" || r.Owner != "worker" || r.Token != lock.Token() || r.At.IsZero() {
			t.Fatalf("release %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitForRelease did not return after the release")
	}
	// A free key returns at once.
	if _, err := c.WaitForRelease(ctxFor(t, time.Second), testKey(t, "never-held")); err != nil {
		t.Fatal(err)
	}
}

// Get reads the holder record; ListLocks lists held locks by prefix.
func TestGetAndListReadTheHolder(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "read")
	lock, err := c.AcquireLock(ctx, key, WithOwnerName("reader"), WithLeaseDuration(5*time.Second), WithData([]byte("v1")))
	if err != nil {
		t.Fatal(err)
	}
	if string(lock.Data()) != "v1" {
		t.Fatalf("Data() = %q", lock.Data())
	}
	info, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	h := info.Holder
	if !info.Held || h == nil || h.Key != key || h.Owner != "reader" || h.Token != lock.Token() || h.LeaseID != lock.LeaseID() ||
		h.TTL != 5*time.Second || h.Value != "v1" || h.Acquisitions != 1 || h.ExpiresIn <= 0 || h.ExpiresIn > 5*time.Second ||
		time.Since(h.LockedAt) > time.Minute || info.Index == 0 {
		t.Fatalf("Get: %+v holder %+v", info, h)
	}
	prefix := key[:strings.LastIndex(key, "/")+1]
	held, err := c.ListLocks(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Key != key || held[0].Token != lock.Token() {
		t.Fatalf("ListLocks(%q) = %+v", prefix, held)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Get(ctx, key); err != nil || info.Held || info.Holder != nil {
		t.Fatalf("after release: %+v, %v", info, err)
	}
}

// An operator's force release makes the holder lose the lock as stolen.
func TestAForceReleaseIsLostAsStolen(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "stolen")
	lock, err := c.AcquireLock(ctx, key, WithOwnerName("victim"), WithLeaseDuration(900*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	owner, token, err := c.ForceReleaseLock(ctx, key)
	if err != nil || owner != "victim" || token != lock.Token() {
		t.Fatalf("force release: %q %d %v", owner, token, err)
	}
	err = receiveLost(t, lock, 3*time.Second)
	var lost *LostError
	if !errors.As(err, &lost) || lost.Reason != LossStolen || !errors.Is(err, ErrNotOwner) {
		t.Fatalf("lost with %v, want stolen", err)
	}
	if err := lock.Release(ctx); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("releasing a stolen lock: %v", err)
	}
}

// Semaphores admit up to limit holders, queue the rest, and insist on one limit.
func TestSemaphoresAdmitLimitHolders(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls(), WithLeaseDuration(5*time.Second))
	key := testKey(t, "pool")
	a, err := c.AcquireSemaphore(ctx, key, 2, WithOwnerName("a"), WithData("slot-a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AcquireSemaphore(ctx, key, 2, WithOwnerName("b"))
	if err != nil {
		t.Fatal(err)
	}
	if b.Token() <= a.Token() || string(a.Data()) != "slot-a" {
		t.Fatalf("tokens %d, %d; data %q", a.Token(), b.Token(), a.Data())
	}
	_, err = c.AcquireSemaphore(ctx, key, 2, WithOwnerName("c"))
	if !errors.Is(err, ErrSemaphoreFull) || !errors.Is(err, ErrLockNotGranted) {
		t.Fatalf("a third slot: %v", err)
	}
	if _, err = c.AcquireSemaphore(ctx, key, 3, WithOwnerName("c")); !errors.Is(err, ErrLimitMismatch) {
		t.Fatalf("another limit: %v", err)
	}
	info, err := c.GetSemaphore(ctx, key)
	if err != nil || info.Limit != 2 || len(info.Holders) != 2 {
		t.Fatalf("GetSemaphore: %+v, %v", info, err)
	}
	all, err := c.ListSemaphores(ctx, key)
	if err != nil || len(all) != 1 || all[0].Key != key {
		t.Fatalf("ListSemaphores: %+v, %v", all, err)
	}
	type result struct {
		slot *Lock
		err  error
	}
	third := make(chan result, 1)
	go func() {
		s, err := c.AcquireSemaphore(ctx, key, 2, WithOwnerName("c"), WithWait(10*time.Second))
		third <- result{s, err}
	}()
	eventually(t, 5*time.Second, "c queued", func() bool {
		info, err := c.GetSemaphore(ctx, key)
		return err == nil && info.Waiters == 1
	})
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-third
	if r.err != nil || r.slot.Token() <= b.Token() {
		t.Fatalf("the queued slot: %v", r.err)
	}
	if err := c.ReleaseSemaphore(ctx, key, "b", b.Token()); err != nil {
		t.Fatal(err)
	}
	if err := r.slot.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if info, err := c.GetSemaphore(ctx, key); err != nil || len(info.Holders) != 0 {
		t.Fatalf("after every release: %+v, %v", info, err)
	}
}

// Holds share a session lease: renewal keeps it alive, releasing one leaves it, and
// revoking it ends the rest.
func TestHoldsShareALease(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	session, err := c.GrantLease(ctx, 1200*time.Millisecond, "worker")
	if err != nil {
		t.Fatal(err)
	}
	if session.ID == 0 || session.TTL != 1200*time.Millisecond || session.Owner != "worker" {
		t.Fatalf("lease %+v", session)
	}
	if ttl, err := c.KeepAlive(ctx, session.ID); err != nil || ttl != session.TTL {
		t.Fatalf("keepalive: %v, %v", ttl, err)
	}
	ka, kb := testKey(t, "a"), testKey(t, "b")
	a, err := c.AcquireLock(ctx, ka, WithLease(session.ID), WithOwnerName("worker"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AcquireLock(ctx, kb, WithLease(session.ID), WithOwnerName("worker"))
	if err != nil {
		t.Fatal(err)
	}
	if a.LeaseID() != session.ID || b.LeaseID() != session.ID {
		t.Fatalf("leases %d, %d; want %d", a.LeaseID(), b.LeaseID(), session.ID)
	}
	// The holds' client deadline follows the lease's TTL, not the default 30 s.
	if until := time.Until(a.ValidUntil()); until > session.TTL {
		t.Fatalf("valid for %v under a %v lease", until, session.TTL)
	}
	// Time passing is the point: the holds' renewals keep the 1.2 s lease alive.
	time.Sleep(2500 * time.Millisecond)
	if !a.IsHeld() || !b.IsHeld() {
		t.Fatalf("held: %v, %v", a.IsHeld(), b.IsHeld())
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := c.GetLease(ctx, session.ID)
	if err != nil || len(info.Locks) != 1 || info.Locks[0] != kb || info.Owner != "worker" {
		t.Fatalf("lease after one release: %+v, %v", info, err)
	}
	released, err := c.RevokeLease(ctx, session.ID)
	if err != nil || len(released) != 1 || released[0] != kb {
		t.Fatalf("revoke: %v, %v", released, err)
	}
	if err := receiveLost(t, b, 3*time.Second); !errors.Is(err, ErrLost) {
		t.Fatalf("b lost with %v", err)
	}
	if _, err := c.KeepAlive(ctx, session.ID); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("keepalive of a revoked lease: %v", err)
	}
	if _, err := c.GetLease(ctx, session.ID); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("a revoked lease: %v", err)
	}
}

// Close releases the client's holds and refuses new acquires; a client's default
// options apply to every acquire.
func TestCloseReleasesTheClientsHolds(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls(), WithLeaseDuration(2*time.Second), WithOwnerName("closer"))
	other := newClient(t, cl.urls())
	key := testKey(t, "closed")
	lock, err := c.AcquireLock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := other.Get(ctx, key); err != nil || info.Holder.Owner != "closer" || info.Holder.TTL != 2*time.Second {
		t.Fatalf("the defaults were not applied: %+v, %v", info.Holder, err)
	}
	leader, err := c.Register(ctx, testKey(t, "name"), "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, l := range []*Lock{lock, leader.Lock} {
		if err, open := <-l.Lost(); err != nil || open || l.State() != Released {
			t.Fatalf("%s after Close: %v, open %v, state %v", l.Key(), err, open, l.State())
		}
	}
	if held, err := other.Has(ctx, key); err != nil || held {
		t.Fatalf("Has after Close = %v, %v", held, err)
	}
	if _, err := other.Lookup(ctx, leader.Name()); !errors.Is(err, ErrNameNotFound) {
		t.Fatalf("the name after Close: %v", err)
	}
	if _, err := c.AcquireLock(ctx, key); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("acquire after Close: %v", err)
	}
}

// Register takes a free name at once and refuses a taken one with name_taken.
func TestRegisterRefusesATakenName(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	name := testKey(t, "registry")
	first, err := c.Register(ctx, name, "10.0.0.1", WithOwnerName("first"), WithLeaseDuration(1500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Register(ctx, name, "10.0.0.2", WithOwnerName("second"))
	if !errors.Is(err, ErrNameTaken) || !errors.Is(err, ErrLockNotGranted) {
		t.Fatalf("registering a taken name: %v", err)
	}
	if e := asError(t, err); e.Holder == nil || e.Holder.Owner != "first" {
		t.Fatalf("the error names %+v", e.Holder)
	}
	names, err := c.ListNames(ctx, name)
	if err != nil || len(names) != 1 || names[0].Owner != "first" || names[0].Value != "10.0.0.1" || !names[0].Registered {
		t.Fatalf("ListNames: %+v, %v", names, err)
	}
	if err := c.Resign(ctx, name, "first", first.Token()); err != nil {
		t.Fatal(err)
	}
	if err := receiveLost(t, first.Lock, 3*time.Second); !errors.Is(err, ErrNameNotFound) && !errors.Is(err, ErrNotOwner) {
		t.Fatalf("the resigned registration lost with %v", err)
	}
}

// While renewals fail the hold is in jeopardy but still held; a renewal that succeeds
// before the deadline makes it held again, with the same token.
func TestJeopardyWhileRenewalsFailThenHeldAgain(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	link := forward(t, cl.urls()[0])
	c := newClient(t, []string{link.url})
	ttl := 3 * time.Second
	lock, err := c.AcquireLock(ctx, testKey(t, "shaky"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	link.cut(true)
	cutAt := time.Now()
	eventually(t, ttl, "jeopardy", func() bool { return lock.State() == Jeopardy })
	if !lock.IsHeld() || lock.ValidUntil().After(ClientDeadline(cutAt, ttl, DefaultDrift)) {
		t.Fatalf("in jeopardy: IsHeld %v, deadline %v after the cut", lock.IsHeld(), lock.ValidUntil().Sub(cutAt))
	}
	link.cut(false)
	eventually(t, ttl, "held again", func() bool { return lock.State() == Held })
	if !lock.ValidUntil().After(ClientDeadline(cutAt, ttl, DefaultDrift)) {
		t.Fatal("held again without a renewal after the cut")
	}
	select {
	case err := <-lock.Lost():
		t.Fatalf("lost: %v", err)
	default:
	}
	info, err := c.Get(ctx, lock.Key())
	if err != nil || info.Holder == nil || info.Holder.Token != lock.Token() {
		t.Fatalf("the server has %+v, %v", info, err)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// link is a TCP forwarder to a node that can be cut: while cut, it closes every
// connection, as a network partition between client and node would.
type link struct {
	url    string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	target string
}

func forward(t *testing.T, target string) *link {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	k := &link{url: "http://" + l.Addr().String(), conns: map[net.Conn]struct{}{}, target: strings.TrimPrefix(target, "http://")}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go k.serve(conn)
		}
	}()
	return k
}

func (k *link) serve(conn net.Conn) {
	node, err := net.Dial("tcp", k.target)
	if err != nil {
		conn.Close()
		return
	}
	if !k.add(conn, node) {
		return
	}
	go func() { _, _ = io.Copy(node, conn); node.Close() }()
	_, _ = io.Copy(conn, node)
	conn.Close()
}

// add registers a connection pair, or closes both if the link is cut.
func (k *link) add(conns ...net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range conns {
		if k.down {
			c.Close()
		} else {
			k.conns[c] = struct{}{}
		}
	}
	return !k.down
}

func (k *link) cut(down bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.down = down
	if down {
		for c := range k.conns {
			c.Close()
		}
		k.conns = map[net.Conn]struct{}{}
	}
}
