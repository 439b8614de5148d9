package leasehold

import (
	"context"
	"net/http"
	"net/url"
)

// AcquireSemaphore takes one of limit slots of the semaphore key and renews it in the
// background, like AcquireLock (same options; the returned *Lock is the slot, with its
// own fencing token). Every holder must use the same limit (else limit_mismatch). A full
// semaphore is a *LockNotGrantedError wrapping semaphore_full, at once or after
// WithWait.
func (c *Client) AcquireSemaphore(ctx context.Context, key string, limit int, opts ...LockOption) (*Lock, error) {
	o, err := c.options(lockDefaults, opts)
	if err != nil {
		return nil, err
	}
	l, _, err := c.acquire(ctx, kindSemaphore, key, limit, o, o.requestID)
	return l, err
}

// ReleaseSemaphore releases the slot of key held by owner with this fencing token,
// without its *Lock.
func (c *Client) ReleaseSemaphore(ctx context.Context, key, owner string, token uint64) error {
	return c.release(ctx, kindSemaphore, key, owner, token)
}

// GetSemaphore reads the semaphore key: its limit, holders and queue.
func (c *Client) GetSemaphore(ctx context.Context, key string) (*SemaphoreInfo, error) {
	path, err := keyPath("semaphores", "key", key)
	if err != nil {
		return nil, err
	}
	var w wireSemaphoreState
	if err := c.do(ctx, request{method: http.MethodGet, path: path}, &w); err != nil {
		return nil, err
	}
	info := w.info()
	return &info, nil
}

// ListSemaphores returns the semaphores in use whose keys start with prefix ("" for
// all), in key order.
func (c *Client) ListSemaphores(ctx context.Context, prefix string) ([]SemaphoreInfo, error) {
	return list(func(after string) ([]SemaphoreInfo, string, error) {
		var page struct {
			Semaphores []wireSemaphoreState `json:"semaphores"`
			NextAfter  string               `json:"next_after"`
		}
		q := url.Values{"prefix": {prefix}}
		if after != "" {
			q.Set("after", after)
		}
		err := c.do(ctx, request{method: http.MethodGet, path: "/v1/semaphores", query: q}, &page)
		out := make([]SemaphoreInfo, 0, len(page.Semaphores))
		for _, s := range page.Semaphores {
			out = append(out, s.info())
		}
		return out, page.NextAfter, err
	})
}
