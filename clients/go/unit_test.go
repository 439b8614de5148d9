package leasehold

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Unit tests: the client-deadline arithmetic, errors, options and configuration. They
// need no cluster (go test -short runs only these).

func TestClientDeadlineIsTSendPlusTTLLessDrift(t *testing.T) {
	tSend := time.Now()
	cases := []struct {
		ttl   time.Duration
		drift float64
		want  time.Duration
	}{
		{time.Second, 0.01, 990 * time.Millisecond},
		{30 * time.Second, 0.01, 29700 * time.Millisecond},
		{1500 * time.Millisecond, 0.01, 1485 * time.Millisecond},
		{86400 * time.Second, 0.01, 85536 * time.Second},
		{time.Second, 0, time.Second},
		{time.Second, 0.1, 900 * time.Millisecond},
		// A fraction of a nanosecond is rounded towards the earlier deadline.
		{3 * time.Nanosecond, 0.5, time.Nanosecond},
	}
	for _, c := range cases {
		got := ClientDeadline(tSend, c.ttl, c.drift).Sub(tSend)
		if got != c.want {
			t.Errorf("ClientDeadline(t, %v, %v) = t + %v, want t + %v", c.ttl, c.drift, got, c.want)
		}
	}
}

func TestHeartbeatDefaultsToAThirdAndMustBeBelowHalfTheTTL(t *testing.T) {
	ok := []struct{ ttl, heartbeat, want time.Duration }{
		{3 * time.Second, 0, time.Second},
		{time.Second, 0, 333333333},
		{3 * time.Second, 1499 * time.Millisecond, 1499 * time.Millisecond},
		{3 * time.Second, time.Millisecond, time.Millisecond},
	}
	for _, c := range ok {
		got, err := heartbeatPeriod(c.ttl, c.heartbeat, DefaultDrift)
		if err != nil || got != c.want {
			t.Errorf("heartbeatPeriod(%v, %v) = %v, %v; want %v", c.ttl, c.heartbeat, got, err, c.want)
		}
	}
	bad := []struct {
		ttl, heartbeat time.Duration
		drift          float64
		field          string
	}{
		{3 * time.Second, 1500 * time.Millisecond, DefaultDrift, "heartbeat_period"},
		{3 * time.Second, 5 * time.Second, DefaultDrift, "heartbeat_period"},
		{3 * time.Second, -time.Second, DefaultDrift, "heartbeat_period"},
		{2, 0, DefaultDrift, "heartbeat_period"}, // ttl/3 rounds to zero
		{3 * time.Second, 0, 0.5, "drift"},
		{3 * time.Second, 0, -0.01, "drift"},
		{3 * time.Second, 0, math.NaN(), "drift"},
	}
	for _, c := range bad {
		_, err := heartbeatPeriod(c.ttl, c.heartbeat, c.drift)
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("heartbeatPeriod(%v, %v, %v) = %v, want invalid_argument", c.ttl, c.heartbeat, c.drift, err)
			continue
		}
		if e := err.(*Error); e.Status != 0 || !strings.HasPrefix(e.Message, c.field+": ") {
			t.Errorf("error %+v should be the client's (status 0) and name %s", e, c.field)
		}
	}
}

func TestLeaseClockMovesTheDeadlineOnlyOnSuccessfulRenewals(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c := newLeaseClock(t0, time.Second, 300*time.Millisecond, DefaultDrift)
	if c.deadline() != at(990*time.Millisecond) || c.wake() != at(300*time.Millisecond) {
		t.Fatalf("start: deadline %v, wake %v", c.deadline().Sub(t0), c.wake().Sub(t0))
	}
	// A renewal that succeeded counts from when it was sent, not when it was answered.
	c.renewed(at(300 * time.Millisecond))
	if c.deadline() != at(1290*time.Millisecond) || c.wake() != at(600*time.Millisecond) {
		t.Fatalf("after a renewal: deadline %v, wake %v", c.deadline().Sub(t0), c.wake().Sub(t0))
	}
	// The deadline never moves back.
	c.renewed(at(100 * time.Millisecond))
	if c.deadline() != at(1290*time.Millisecond) {
		t.Fatalf("an older renewal moved the deadline to %v", c.deadline().Sub(t0))
	}
	// A failure leaves the deadline and retries a quarter heartbeat later...
	c.failed(at(700 * time.Millisecond))
	if c.deadline() != at(1290*time.Millisecond) || c.wake() != at(775*time.Millisecond) {
		t.Fatalf("after a failure: deadline %v, wake %v", c.deadline().Sub(t0), c.wake().Sub(t0))
	}
	// ... but never after the deadline.
	c.failed(at(1250 * time.Millisecond))
	if c.wake() != c.deadline() {
		t.Fatalf("retry at %v, after the deadline %v", c.wake().Sub(t0), c.deadline().Sub(t0))
	}
	if c.expired(at(1289*time.Millisecond)) || !c.expired(at(1290*time.Millisecond)) {
		t.Fatal("expired must hold from the deadline on, not before")
	}
	// Fast heartbeats retry no sooner than every 10 ms.
	fast := newLeaseClock(t0, time.Second, 20*time.Millisecond, DefaultDrift)
	fast.failed(t0)
	if fast.wake() != at(10*time.Millisecond) {
		t.Fatalf("retry after %v, want 10ms", fast.wake().Sub(t0))
	}
}

func TestErrorRepliesMatchTheirSentinels(t *testing.T) {
	body := `{"error":{"code":"lock_held","message":"lock \"k\" is held by \"alice\" (token 7)","holder":{"owner":"alice","token":7,"expires_in_ms":4972}}}`
	e := parseError(409, http.Header{}, []byte(body))
	if !errors.Is(e, ErrLockHeld) || errors.Is(e, ErrNotOwner) || errors.Is(e, ErrLockNotGranted) {
		t.Fatalf("%v matches the wrong sentinels", e)
	}
	want := HolderSummary{Owner: "alice", Token: 7, ExpiresIn: 4972 * time.Millisecond}
	if e.Status != 409 || e.Holder == nil || *e.Holder != want {
		t.Fatalf("parsed %+v holder %+v", e, e.Holder)
	}
	if got := e.Error(); got != `leasehold: lock_held: lock "k" is held by "alice" (token 7)` {
		t.Fatalf("Error() = %q", got)
	}

	stolen := parseError(409, http.Header{}, []byte(`{"error":{"code":"not_owner","message":"m","reason":"stolen"}}`))
	if !errors.Is(stolen, ErrNotOwner) || stolen.Reason != "stolen" || !holdIsGone(stolen) {
		t.Fatalf("stolen: %+v", stolen)
	}

	// A reply that is not the API's JSON (a proxy's) maps by its status.
	proxy := parseError(503, http.Header{"Retry-After": {"2"}}, []byte("Service Unavailable\n"))
	if !errors.Is(proxy, ErrUnavailable) || proxy.RetryAfter != 2*time.Second || proxy.Message != "HTTP 503: Service Unavailable" {
		t.Fatalf("proxy 503: %+v", proxy)
	}
	if odd := parseError(418, http.Header{}, []byte("teapot")); odd.Code != "internal" {
		t.Fatalf("418: %+v", odd)
	}

	notGranted := error(&LockNotGrantedError{Key: "k", Wait: time.Second, Err: e})
	var apiErr *Error
	if !errors.Is(notGranted, ErrLockNotGranted) || !errors.Is(notGranted, ErrLockHeld) || !errors.As(notGranted, &apiErr) || apiErr.Holder.Owner != "alice" {
		t.Fatalf("LockNotGrantedError: %v", notGranted)
	}
	if !strings.Contains(notGranted.Error(), "within 1s") {
		t.Fatalf("LockNotGrantedError says %q", notGranted)
	}

	revoked := error(&LostError{Key: "k", Token: 7, Reason: LossExpired, Err: stolen})
	if !errors.Is(revoked, ErrLost) || errors.Is(revoked, ErrClientDeadline) || !errors.Is(revoked, ErrNotOwner) {
		t.Fatalf("LostError(expired) matches wrongly: %v", revoked)
	}
	for _, r := range []LossReason{LossUnreachable, LossHeartbeatStopped} {
		if lost := error(&LostError{Key: "k", Reason: r}); !errors.Is(lost, ErrLost) || !errors.Is(lost, ErrClientDeadline) {
			t.Fatalf("LostError(%s) must match ErrLost and ErrClientDeadline", r)
		}
	}
}

func TestNewChecksTheConfiguration(t *testing.T) {
	c, err := New(Config{Endpoints: []string{"http://a:1/", " https://b:2 ", ""}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Endpoints(), ","); got != "http://a:1,https://b:2" {
		t.Fatalf("endpoints %q", got)
	}
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		cfg   Config
		field string
	}{
		{Config{}, "endpoints"},
		{Config{Endpoints: []string{"localhost:7070"}}, "endpoints"},
		{Config{Endpoints: []string{"ftp://a:1"}}, "endpoints"},
		{Config{Endpoints: []string{"http://a:1"}, Token: "has space"}, "token"},
		{Config{Endpoints: []string{"http://a:1"}, CAFile: filepath.Join(dir, "missing.crt")}, "ca_file"},
		{Config{Endpoints: []string{"http://a:1"}, CAFile: notPEM}, "ca_file"},
	}
	for _, b := range bad {
		_, err := New(b.cfg)
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) || !strings.HasPrefix(e.Message, b.field+": ") {
			t.Errorf("New(%+v) = %v, want invalid_argument naming %s", b.cfg, err, b.field)
		}
		if strings.Contains(err.Error(), "has space") {
			t.Errorf("the error repeats the token: %v", err)
		}
	}
	if _, err := New(Config{Endpoints: []string{"http://a:1"}}, WithLeaseDuration(time.Second), WithHeartbeatPeriod(time.Second)); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad default options were accepted: %v", err)
	}
	// One request id for every acquire of a client would make each acquire a replay of
	// the first.
	_, err = New(Config{Endpoints: []string{"http://a:1"}}, WithRequestID("once"))
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrInvalidArgument) || !strings.HasPrefix(e.Message, "request_id: ") {
		t.Errorf("a client-wide request id: %v, want invalid_argument naming request_id", err)
	}
}

func TestRequestIDsAreUniqueAcrossCallsAndClients(t *testing.T) {
	a, _ := New(Config{Endpoints: []string{"http://a:1"}})
	b, _ := New(Config{Endpoints: []string{"http://a:1"}})
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		for _, id := range []string{a.NewRequestID(), b.NewRequestID()} {
			if seen[id] {
				t.Fatalf("request id %q repeats", id)
			}
			seen[id] = true
		}
	}
}

func TestKeysAreEscapedForPaths(t *testing.T) {
	for in, want := range map[string]string{
		"jobs/sitemap:1": "jobs/sitemap:1",
		"a b?c#d%":       "a%20b%3Fc%23d%25",
		"k\x01":          "k%01",
		"é":              "%C3%A9",
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := keyPath("locks", "key", ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("an empty key: %v", err)
	}
}

func TestDurationsGoOnTheWireInWholeMillisecondsRoundedUp(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0: 0, time.Second: 1000, 1500 * time.Microsecond: 2, time.Nanosecond: 1, -time.Second: -1000,
	} {
		if got := toMs(d); got != want {
			t.Errorf("toMs(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestWaitsLeaveTheServerTimeToAnswerBeforeTheContextEnds(t *testing.T) {
	if got := waitWithin(context.Background(), time.Minute); got != time.Minute {
		t.Errorf("no deadline: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if got := waitWithin(ctx, 10*time.Second); got > 1800*time.Millisecond || got < 1700*time.Millisecond {
		t.Errorf("10s within 2s: %v", got)
	}
	if got := waitWithin(ctx, time.Second); got != time.Second {
		t.Errorf("1s within 2s: %v", got)
	}
	done, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	if got := waitWithin(done, time.Second); got != 0 {
		t.Errorf("an ended context: %v", got)
	}
}

// Options are checked before anything is sent: the endpoint here refuses connections,
// so a request would fail as unavailable instead.
func TestBadOptionsAreRefusedBeforeAnyRequest(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	c, err := New(Config{Endpoints: []string{closed}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := map[string]func() error{
		"heartbeat_period": func() error {
			_, err := c.AcquireLock(ctx, "k", WithLeaseDuration(2*time.Second), WithHeartbeatPeriod(time.Second))
			return err
		},
		"value": func() error {
			_, err := c.AcquireLock(ctx, "k", WithData([]byte{0xff, 0xfe}))
			return err
		},
		"key": func() error {
			_, err := c.AcquireLock(ctx, "")
			return err
		},
		"name": func() error {
			_, err := c.Campaign(ctx, "", "v")
			return err
		},
	}
	for field, call := range cases {
		err := call()
		var e *Error
		if !errors.As(err, &e) || e.Status != 0 || !errors.Is(err, ErrInvalidArgument) || !strings.HasPrefix(e.Message, field+": ") {
			t.Errorf("%s: got %v, want the client's invalid_argument naming it", field, err)
		}
	}
	// And a request that is sent fails over and ends as unavailable.
	if _, err := c.Has(ctx, "k"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a refused connection: %v", err)
	}
}
