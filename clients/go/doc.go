// Package leasehold is a client of leasehold, a replicated lock, lease and
// leader-election service, over its HTTP/JSON API. It uses only the standard library.
//
// A Client fails over between the cluster's endpoints and tags every mutating call
// with a request id, reused on retries, so that a retried call never acts twice:
//
//	c, err := leasehold.New(leasehold.Config{
//		Endpoints: []string{"http://10.0.0.1:7001", "http://10.0.0.2:7001", "http://10.0.0.3:7001"},
//	})
//	lock, err := c.AcquireLock(ctx, "jobs/sitemap",
//		leasehold.WithLeaseDuration(30*time.Second),
//		leasehold.WithWait(10*time.Second))
//	if errors.Is(err, leasehold.ErrLockNotGranted) { ... }   // still held after 10 s
//	defer lock.Release(ctx)
//	select {
//	case err := <-lock.Lost(): // stop the work: the lock is no longer ours
//	case <-work(ctx, lock.Token()): // the fencing token, for downstream writes
//	}
//
// Held locks, semaphore slots and names are renewed in the background every heartbeat
// period (a third of the TTL by default). The client believes it holds until its
// client deadline, t_send + ttl × (1 − drift) with t_send the send time of the last
// request that refreshed the lease (SPEC §2 rule 5); when the deadline passes without
// a successful renewal, or the cluster says the hold is gone, Lost() fires.
package leasehold
