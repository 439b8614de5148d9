package leasehold_test

import (
	"context"
	"errors"
	"log"
	"time"

	leasehold "github.com/leasehold/leasehold/clients/go"
)

// A lock held while work runs: renewed in the background, its fencing token passed
// downstream, and the work stopped if the lock is lost.
func ExampleClient_AcquireLock() {
	ctx := context.Background()
	c, err := leasehold.New(leasehold.Config{
		Endpoints: []string{"http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)

	lock, err := c.AcquireLock(ctx, "jobs/sitemap",
		leasehold.WithLeaseDuration(30*time.Second),
		leasehold.WithWait(10*time.Second))
	var refused *leasehold.Error
	switch {
	case errors.Is(err, leasehold.ErrLockNotGranted) && errors.As(err, &refused):
		log.Printf("still held by %s after 10 s", refused.Holder.Owner)
		return
	case err != nil:
		log.Fatal(err)
	}
	defer lock.Release(ctx)

	work, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		if err := <-lock.Lost(); err != nil {
			log.Printf("lost: %v", err)
			cancel()
		}
	}()
	generateSitemap(work, lock.Token())
}

// Leader election: campaign until elected, serve while leading, resign when done.
func ExampleClient_Campaign() {
	ctx := context.Background()
	c, err := leasehold.New(leasehold.Config{Endpoints: []string{"http://127.0.0.1:7001"}})
	if err != nil {
		log.Fatal(err)
	}
	leader, err := c.Campaign(ctx, "svc/leader", "10.0.0.7:8080", leasehold.WithLeaseDuration(10*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer leader.Resign(ctx)
	select {
	case err := <-leader.Lost():
		log.Printf("no longer leader: %v", err)
	case <-serve(ctx):
	}
}

func generateSitemap(ctx context.Context, fencingToken uint64) {}

func serve(ctx context.Context) <-chan struct{} { return ctx.Done() }
