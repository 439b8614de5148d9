//go:build unix

package leasehold

import (
	"errors"
	"testing"
	"time"
)

// Re-anchoring the client deadline where an acquire does not start its lease's TTL
// afresh, and retrying acquires and releases without leaving holds behind.

// A hold under an existing lease is timed from a renewal of that lease, not from the
// acquire: the acquire attaches to the lease without renewing it (its TTL runs from its
// last renewal), so the client must not believe it holds for longer than the lease has
// left.
func TestAHoldUnderAnOlderLeaseIsTimedFromARenewal(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	session, err := c.GrantLease(ctx, 3*time.Second, "session")
	if err != nil {
		t.Fatal(err)
	}
	// Time passing is the point: the lease's TTL runs down while nothing renews it.
	time.Sleep(1500 * time.Millisecond)
	lock, err := c.AcquireLock(ctx, testKey(t, "k"), WithLease(session.ID), WithOwnerName("session"))
	if err != nil {
		t.Fatal(err)
	}
	// The lease first, then the belief: the lease's true time left now is at most what
	// the read reported, so the check holds however slow the read was.
	info, err := c.GetLease(ctx, session.ID)
	if err != nil {
		t.Fatal(err)
	}
	believed := time.Until(lock.ValidUntil())
	if believed > info.Remaining+50*time.Millisecond {
		t.Fatalf("the client believes it holds for %v, but the lease has %v left", believed, info.Remaining)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RevokeLease(ctx, session.ID); err != nil {
		t.Fatal(err)
	}
}

// An acquire sent again with the caller's request id gets the first grant back from the
// server's dedupe window, which does not refresh the lease: the client re-anchors its
// deadline with a renewal, and a grant whose hold has ended since is an error, not a
// Lock.
func TestAnAcquireRetriedWithTheCallersRequestIDIsReanchored(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	c := newClient(t, cl.urls())
	key := testKey(t, "k")
	id := c.NewRequestID()
	ttl := 3 * time.Second
	first, err := c.AcquireLock(ctx, key, WithRequestID(id), WithOwnerName("retrier"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	first.StopHeartbeat() // nothing renews the lease but the retry
	time.Sleep(1500 * time.Millisecond)
	again, err := c.AcquireLock(ctx, key, WithRequestID(id), WithOwnerName("retrier"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	if again.Token() != first.Token() || again.LeaseID() != first.LeaseID() {
		t.Fatalf("the retry got token %d lease %d, the first %d lease %d", again.Token(), again.LeaseID(), first.Token(), first.LeaseID())
	}
	info, err := c.GetLease(ctx, again.LeaseID())
	if err != nil {
		t.Fatal(err)
	}
	believed := time.Until(again.ValidUntil()) // after the read, as above
	if believed > info.Remaining+50*time.Millisecond {
		t.Fatalf("the retry believes it holds for %v, but the lease has %v left", believed, info.Remaining)
	}
	if err := again.Release(ctx); err != nil {
		t.Fatal(err)
	}
	// The same id once more replays a grant whose hold has ended.
	dead, err := c.AcquireLock(ctx, key, WithRequestID(id), WithOwnerName("retrier"), WithLeaseDuration(ttl))
	if err == nil {
		t.Fatalf("a replayed grant of a released hold was returned as a Lock (token %d)", dead.Token())
	}
	if !errors.Is(err, ErrNotOwner) && !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("a replayed grant of a released hold: %v", err)
	}
	if held, err := c.Has(ctx, key); err != nil || held {
		t.Fatalf("Has = %v, %v after the release", held, err)
	}
}

// A campaign whose request acted but whose reply was lost sends it again with the same
// request id: it gets its own grant back instead of queueing behind it for a TTL.
func TestACampaignRetriedAfterALostReplyKeepsItsRequestID(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	// One endpoint that drops the first two replies: the call's own retry, then the
	// campaign's retry after the call failed as unavailable.
	proxy := dropFirstReplies(t, cl.urls()[0], 2)
	c := newClient(t, []string{proxy.url})
	name := testKey(t, "leader")
	ttl := 4 * time.Second
	start := time.Now()
	leader, err := c.Campaign(ctx, name, "v", WithLeaseDuration(ttl), WithOwnerName("candidate"))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if n := proxy.dropped.Load(); n != 2 {
		t.Fatalf("%d replies dropped, want 2: the retries did not happen as planned", n)
	}
	if took > ttl/2 {
		t.Fatalf("elected after %v: the campaign queued behind its own earlier grant", took)
	}
	info, err := c.Lookup(ctx, name)
	if err != nil || info.Token != leader.Token() || info.Owner != "candidate" {
		t.Fatalf("whereis %+v, %v; leader token %d", info, err, leader.Token())
	}
	if err := leader.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, name); !errors.Is(err, ErrNameNotFound) {
		t.Fatalf("the name after resigning: %v", err)
	}
}

// A Release that fails for want of a node leaves the hold as it was: renewed, tracked,
// and released by a later Release or by Close.
func TestAFailedReleaseCanBeRetried(t *testing.T) {
	cl := sharedCluster(t)
	ctx := ctxFor(t, 20*time.Second)
	link := forward(t, cl.urls()[0])
	c := newClient(t, []string{link.url})
	other := newClient(t, cl.urls())
	ttl := 1500 * time.Millisecond
	lock, err := c.AcquireLock(ctx, testKey(t, "k"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	link.cut(true)
	if err := lock.Release(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a release with no node reachable: %v", err)
	}
	link.cut(false)
	if s := lock.State(); s != Held && s != Jeopardy {
		t.Fatalf("state %v after a failed release", s)
	}
	// Time passing is the point: renewals go on past the deadline of the last one.
	time.Sleep(ttl + 500*time.Millisecond)
	if !lock.IsHeld() {
		t.Fatalf("not held after a failed release (state %v, %v)", lock.State(), lock.Err())
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatalf("retrying the release: %v", err)
	}
	if err, open := <-lock.Lost(); err != nil || open || lock.State() != Released {
		t.Fatalf("after the release: %v, open %v, state %v", err, open, lock.State())
	}
	if held, err := other.Has(ctx, lock.Key()); err != nil || held {
		t.Fatalf("Has = %v, %v after the release", held, err)
	}
	if err := lock.Release(ctx); !errors.Is(err, ErrAlreadyReleased) {
		t.Fatalf("a second release: %v", err)
	}

	// Close releases a hold whose Release failed.
	kept, err := c.AcquireLock(ctx, testKey(t, "kept"), WithLeaseDuration(ttl))
	if err != nil {
		t.Fatal(err)
	}
	link.cut(true)
	if err := kept.Release(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a release with no node reachable: %v", err)
	}
	link.cut(false)
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if kept.State() != Released {
		t.Fatalf("state %v after Close", kept.State())
	}
	if held, err := other.Has(ctx, kept.Key()); err != nil || held {
		t.Fatalf("Has = %v, %v after Close", held, err)
	}
}
