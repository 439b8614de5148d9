package leasehold

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// GrantLease creates a lease (a session) with this TTL; holds acquired WithLease(id)
// live under it, and end together when it expires or is revoked. The caller keeps it
// alive with KeepAlive (or by renewing a hold under it).
func (c *Client) GrantLease(ctx context.Context, ttl time.Duration, owner string) (*Lease, error) {
	body := struct {
		TTLMs     int64  `json:"ttl_ms"`
		Owner     string `json:"owner,omitempty"`
		RequestID string `json:"request_id"`
	}{toMs(ttl), owner, c.NewRequestID()}
	var w struct {
		LeaseID uint64 `json:"lease_id"`
		TTLMs   uint64 `json:"ttl_ms"`
		Owner   string `json:"owner"`
	}
	if err := c.do(ctx, request{method: http.MethodPost, path: "/v1/leases", body: body}, &w); err != nil {
		return nil, err
	}
	return &Lease{ID: w.LeaseID, TTL: ms(w.TTLMs), Owner: w.Owner}, nil
}

// KeepAlive refreshes lease id for another full TTL and returns the TTL. A lease that
// expired or was revoked is an error matching ErrLeaseNotFound. Under the client-deadline
// rule the caller may rely on the lease until ClientDeadline(sent, ttl, DefaultDrift),
// where sent is when it called KeepAlive.
func (c *Client) KeepAlive(ctx context.Context, id uint64) (time.Duration, error) {
	var w struct {
		TTLMs uint64 `json:"ttl_ms"`
	}
	path := "/v1/leases/" + strconv.FormatUint(id, 10) + "/keepalive"
	if err := c.do(ctx, request{method: http.MethodPost, path: path}, &w); err != nil {
		return 0, err
	}
	return ms(w.TTLMs), nil
}

// RevokeLease ends lease id now, releasing every hold under it (each passes to its next
// waiter). It returns the keys released (names prefixed "name:", semaphores
// "semaphore:").
func (c *Client) RevokeLease(ctx context.Context, id uint64) ([]string, error) {
	var w struct {
		Released []string `json:"released"`
	}
	path := "/v1/leases/" + strconv.FormatUint(id, 10)
	q := url.Values{"request_id": {c.NewRequestID()}}
	if err := c.do(ctx, request{method: http.MethodDelete, path: path, query: q}, &w); err != nil {
		return nil, err
	}
	return w.Released, nil
}

// GetLease reads lease id: its TTL, time left and the holds under it.
func (c *Client) GetLease(ctx context.Context, id uint64) (*LeaseInfo, error) {
	var w wireLeaseInfo
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/leases/" + strconv.FormatUint(id, 10)}, &w); err != nil {
		return nil, err
	}
	info := w.info()
	return &info, nil
}

// ListLeases returns every live lease (that the token may see), in id order.
func (c *Client) ListLeases(ctx context.Context) ([]LeaseInfo, error) {
	return list(func(after string) ([]LeaseInfo, string, error) {
		var page struct {
			Leases    []wireLeaseInfo `json:"leases"`
			NextAfter *uint64         `json:"next_after"`
		}
		q := url.Values{}
		if after != "" {
			q.Set("after", after)
		}
		err := c.do(ctx, request{method: http.MethodGet, path: "/v1/leases", query: q}, &page)
		out := make([]LeaseInfo, 0, len(page.Leases))
		for _, l := range page.Leases {
			out = append(out, l.info())
		}
		next := ""
		if page.NextAfter != nil {
			next = strconv.FormatUint(*page.NextAfter, 10)
		}
		return out, next, err
	})
}
