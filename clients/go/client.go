package leasehold

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Default timeouts of a Client.
const (
	// DefaultTimeout bounds one call across all endpoints (blocking calls get their wait
	// on top).
	DefaultTimeout = 10 * time.Second
	// DefaultAttemptTimeout bounds one try at one endpoint before the next is tried
	// (plus the wait): a paused or partitioned node accepts connections but never answers.
	DefaultAttemptTimeout = 2 * time.Second
)

// maxReplyBytes bounds how much of a reply is read.
const maxReplyBytes = 32 << 20

// Logger receives the client's log lines (failovers, renewals in trouble, losses).
// *log.Logger satisfies it.
type Logger interface {
	Printf(format string, v ...any)
}

// Config configures a Client.
type Config struct {
	// Endpoints are the nodes' base URLs, "http://host:port" or "https://host:port".
	// Any node serves any request; the client fails over between them. Required.
	Endpoints []string
	// Token is a bearer token, sent as "Authorization: Bearer <token>" (clusters with
	// [auth]). Empty sends none.
	Token string
	// CAFile is a PEM file of CA certificates to trust for https endpoints, besides the
	// system's roots.
	CAFile string
	// Timeout bounds one call across all endpoints, plus the wait of a blocking call.
	// Default DefaultTimeout.
	Timeout time.Duration
	// AttemptTimeout bounds one try at one endpoint before the next is tried, plus the
	// wait of a blocking call. Default DefaultAttemptTimeout.
	AttemptTimeout time.Duration
	// Logger receives failovers, renewal failures and losses; nil logs nothing.
	Logger Logger
}

// Client talks to a leasehold cluster over its HTTP API (SPEC §3). It is safe for
// concurrent use. A request goes to the endpoint that answered last; on a connection
// error, a timeout or a 503 unavailable it tries the next one, going round the endpoints
// at most twice within Config.Timeout. Every mutating call carries a request_id, the
// same on every retry of that call, so a retried call never acts twice.
type Client struct {
	endpoints      []string
	http           *http.Client
	token          string
	timeout        time.Duration
	attemptTimeout time.Duration
	logger         Logger
	defaults       []LockOption

	current   atomic.Int64 // index of the endpoint that answered last
	idPrefix  string
	idCounter atomic.Uint64

	mu     sync.Mutex
	holds  map[*Lock]struct{} // renewing holds, released by Close
	closed bool
}

// New makes a client of the cluster at cfg.Endpoints. The optional defaults apply to
// every AcquireLock, AcquireSemaphore, Campaign and Register of this client, before
// that call's own options (so New(cfg, WithLeaseDuration(10*time.Second)) sets the
// TTL of every hold, as the DynamoDB lock client's New does).
func New(cfg Config, defaults ...LockOption) (*Client, error) {
	var endpoints []string
	for _, e := range cfg.Endpoints {
		e = strings.TrimRight(strings.TrimSpace(e), "/")
		if e == "" {
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, invalid("endpoints", "%q must be an http:// or https:// URL", e)
		}
		endpoints = append(endpoints, e)
	}
	if len(endpoints) == 0 {
		return nil, invalid("endpoints", "give at least one endpoint URL")
	}
	token := strings.TrimSpace(cfg.Token)
	for i := 0; i < len(token); i++ {
		if token[i] <= ' ' || token[i] > '~' {
			// The message never repeats the token: it is a secret.
			return nil, invalid("token", "must be printable ASCII without spaces")
		}
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 32
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, invalid("ca_file", "cannot read %s: %v", cfg.CAFile, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, invalid("ca_file", "%s holds no PEM certificate", cfg.CAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c := &Client{
		endpoints:      endpoints,
		http:           &http.Client{Transport: transport},
		token:          token,
		timeout:        orDefault(cfg.Timeout, DefaultTimeout),
		attemptTimeout: orDefault(cfg.AttemptTimeout, DefaultAttemptTimeout),
		logger:         cfg.Logger,
		defaults:       defaults,
		idPrefix:       "go-" + randomHex(6) + "-",
		holds:          make(map[*Lock]struct{}),
	}
	if _, err := c.options(lockDefaults, nil); err != nil {
		return nil, err
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b)
}

// Endpoints returns the endpoints the client fails over between.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// NewRequestID returns a fresh idempotency key for WithRequestID: unique per client and
// process.
func (c *Client) NewRequestID() string {
	return c.idPrefix + strconv.FormatUint(c.idCounter.Add(1), 10)
}

// Close releases every hold acquired through this client that is still renewed (not
// those whose heartbeat was stopped), and refuses further acquires with ErrClientClosed.
// It returns the first release error.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	holds := make([]*Lock, 0, len(c.holds))
	for l := range c.holds {
		holds = append(holds, l)
	}
	c.mu.Unlock()
	var first error
	for _, l := range holds {
		if l.heartbeatStopped() {
			continue
		}
		if err := l.Release(ctx); err != nil && !errors.Is(err, ErrAlreadyReleased) && first == nil {
			first = err
		}
	}
	c.http.CloseIdleConnections()
	return first
}

func (c *Client) track(l *Lock) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClientClosed
	}
	c.holds[l] = struct{}{}
	return nil
}

func (c *Client) untrack(l *Lock) {
	c.mu.Lock()
	delete(c.holds, l)
	c.mu.Unlock()
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *Client) logf(format string, args ...any) {
	if c.logger != nil {
		c.logger.Printf("leasehold: "+format, args...)
	}
}

// errText is err's text without the "leasehold: " prefix, for log lines that have it.
func errText(err error) string { return strings.TrimPrefix(err.Error(), "leasehold: ") }

// request is one API call: what to send, and how long the server may take beyond the
// usual deadline (the wait of a blocking call).
type request struct {
	method string
	path   string
	query  url.Values
	body   any
	wait   time.Duration
	// attempt, when set, bounds one try at one endpoint instead of the client's
	// AttemptTimeout (renewals use a shorter one so that they can fail over in time).
	attempt time.Duration
}

// do sends r with failover and decodes a 2xx reply into out (when not nil).
func (c *Client) do(ctx context.Context, r request, out any) error {
	var payload []byte
	if r.body != nil {
		var err error
		if payload, err = json.Marshal(r.body); err != nil {
			return invalid("body", "cannot encode the request: %v", err)
		}
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout+r.wait)
	defer cancel()
	perTry := c.attemptTimeout
	if r.attempt > 0 && r.attempt < perTry {
		perTry = r.attempt
	}
	perTry += r.wait
	n := len(c.endpoints)
	start := int(c.current.Load())
	var last *Error
	// Go round the endpoints twice: a node may be mid-failover on the first pass.
	for attempt := 0; attempt < 2*n && callCtx.Err() == nil; attempt++ {
		if attempt == n && !sleep(callCtx, 100*time.Millisecond) {
			break // every node failed once: pause before the second pass
		}
		i := (start + attempt) % n
		status, header, body, err := c.send(callCtx, i, r, payload, perTry)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			last = err
			c.logf("%s %s via %s failed (%s); trying the next endpoint", r.method, r.path, c.endpoints[i], errText(err))
			continue
		}
		if status >= 200 && status < 300 {
			c.current.Store(int64(i))
			if out != nil {
				if err := json.Unmarshal(body, out); err != nil {
					return &Error{Status: status, Code: "internal", Message: fmt.Sprintf("unexpected reply from %s: %v", c.endpoints[i], err), err: err}
				}
			}
			return nil
		}
		apiErr := parseError(status, header, body)
		if status == http.StatusServiceUnavailable {
			// This node cannot serve now (no leader, no quorum, storage fault): try another.
			last = apiErr
			c.logf("%s %s via %s: %s; trying the next endpoint", r.method, r.path, c.endpoints[i], errText(apiErr))
			continue
		}
		c.current.Store(int64(i))
		return apiErr
	}
	if err := ctx.Err(); err != nil {
		if last != nil {
			return fmt.Errorf("leasehold: %s %s: %w (last error: %v)", r.method, r.path, err, last)
		}
		return fmt.Errorf("leasehold: %s %s: %w", r.method, r.path, err)
	}
	if last == nil {
		return &Error{Code: "timeout", Message: fmt.Sprintf("no endpoint answered within %v", c.timeout+r.wait)}
	}
	return last
}

// send makes one try at endpoint i: the status, headers and body of a reply, or the
// transport error.
func (c *Client) send(ctx context.Context, i int, r request, payload []byte, perTry time.Duration) (int, http.Header, []byte, *Error) {
	ctx, cancel := context.WithTimeout(ctx, perTry)
	defer cancel()
	u := c.endpoints[i] + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		return 0, nil, nil, &Error{Code: "invalid_argument", Message: fmt.Sprintf("cannot make a request for %s: %v", u, err), err: err}
	}
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "leasehold-go")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err == nil {
		var reply []byte
		reply, err = io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
		resp.Body.Close()
		if err == nil {
			return resp.StatusCode, resp.Header, reply, nil
		}
	}
	if ctx.Err() == context.DeadlineExceeded {
		return 0, nil, nil, &Error{Code: "timeout", Message: fmt.Sprintf("%s: no answer within %v", c.endpoints[i], perTry.Round(time.Millisecond)), err: err}
	}
	return 0, nil, nil, &Error{Code: "unavailable", Message: fmt.Sprintf("%s: cannot reach the node: %v", c.endpoints[i], err), err: err}
}

// sleep waits d, or until ctx is done (then it returns false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitWithin bounds a requested server-side wait by ctx's deadline, leaving the server
// time to answer before ctx ends (so that it refuses cleanly instead of being cut off).
func waitWithin(ctx context.Context, want time.Duration) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok || want <= 0 {
		return want
	}
	left := time.Until(deadline)
	margin := left / 10
	if margin > time.Second {
		margin = time.Second
	}
	if left -= margin; left < want {
		want = left
	}
	if want < time.Millisecond {
		return 0
	}
	return want
}

// escape percent-encodes a key or name for a path, keeping '/' (keys may contain it).
func escape(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		ch := key[i]
		switch {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9',
			ch == '-', ch == '_', ch == '.', ch == '~', ch == '/', ch == ':':
			b.WriteByte(ch)
		default:
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

// keyPath is "/v1/<kind>/<escaped key>", refusing an empty key as the server would (its
// route would not even match).
func keyPath(kind, field, key string) (string, error) {
	if key == "" {
		return "", invalid(field, "must not be empty")
	}
	return "/v1/" + kind + "/" + escape(key), nil
}

// list follows a listing's pages: fetch(after) returns a page and the next cursor.
func list[T any](fetch func(after string) ([]T, string, error)) ([]T, error) {
	var all []T
	after := ""
	for {
		page, next, err := fetch(after)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" || next == after {
			return all, nil
		}
		after = next
	}
}

// Cluster returns the serving node's view of the cluster (GET /v1/cluster).
func (c *Client) Cluster(ctx context.Context) (*ClusterStatus, error) {
	var w wireCluster
	if err := c.do(ctx, request{method: http.MethodGet, path: "/v1/cluster"}, &w); err != nil {
		return nil, err
	}
	s := &ClusterStatus{NodeID: w.NodeID, Term: w.Term, CommitIndex: w.CommitIndex, AppliedIndex: w.AppliedIndex}
	if w.LeaderID != nil {
		s.LeaderID = *w.LeaderID
	}
	for _, m := range w.Members {
		s.Members = append(s.Members, Member{ID: m.ID, PeerAddr: m.Addr, ClientAddr: m.ClientAddr, Voter: m.Voter})
	}
	return s, nil
}
