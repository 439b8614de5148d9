//go:build unix

package leasehold

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The conformance scenarios (clients/CONFORMANCE.md) run against real three-node clusters
// of the built binary: one shared by the scenarios that leave it intact, started in
// TestMain, and one of their own for those that pause or kill nodes.

var (
	shared    *testCluster
	sharedErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Short() {
		shared, sharedErr = startCluster(clusterOptions{})
	}
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

// sharedCluster is the suite's cluster; the test fails if it could not start.
func sharedCluster(t *testing.T) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a cluster; not run with -short")
	}
	if sharedErr != nil {
		t.Fatalf("no cluster: %v", sharedErr)
	}
	return shared
}

// ownCluster starts a cluster for one test, stopped when the test ends.
func ownCluster(t *testing.T, o clusterOptions) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a cluster; not run with -short")
	}
	c, err := startCluster(o)
	if err != nil {
		t.Fatalf("no cluster: %v", err)
	}
	t.Cleanup(c.stop)
	return c
}

// binary is LEASEHOLD_BIN, or target/debug/leasehold of the repository.
func binary() string {
	if bin := os.Getenv("LEASEHOLD_BIN"); bin != "" {
		return bin
	}
	bin, _ := filepath.Abs(filepath.Join("..", "..", "target", "debug", "leasehold"))
	return bin
}

type testNode struct {
	id         int
	clientAddr string
	peerAddr   string
	cmd        *exec.Cmd
	exited     chan struct{}
	paused     bool
	killed     bool
}

type testCluster struct {
	dir   string
	nodes []*testNode
	opts  clusterOptions
	mu    sync.Mutex
}

// clusterOptions are extra flags for every node, and how to reach nodes started with
// them: over https trusting ca, with a bearer token.
type clusterOptions struct {
	args  []string
	ca    *x509.CertPool
	token string
}

func (o clusterOptions) scheme() string {
	if o.ca != nil {
		return "https"
	}
	return "http"
}

// startCluster starts three in-memory nodes on free ports and waits for a leader that
// every node knows. A port taken between choosing and binding it is retried with others.
func startCluster(o clusterOptions) (*testCluster, error) {
	bin := binary()
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("the leasehold binary is not at %s: build it (cargo build) or set LEASEHOLD_BIN", bin)
	}
	var err error
	for try := 0; try < 3; try++ {
		var c *testCluster
		if c, err = launch(bin, o); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func launch(bin string, o clusterOptions) (*testCluster, error) {
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "leasehold-go-test-")
	if err != nil {
		return nil, err
	}
	c := &testCluster{dir: dir, opts: o}
	var members []string
	for i := 0; i < 3; i++ {
		n := &testNode{id: i + 1, clientAddr: ports[i], peerAddr: ports[3+i], exited: make(chan struct{})}
		c.nodes = append(c.nodes, n)
		members = append(members, fmt.Sprintf("%d=%s", n.id, n.peerAddr))
	}
	for _, n := range c.nodes {
		if err := c.startNode(bin, n, strings.Join(members, ",")); err != nil {
			c.stop()
			return nil, err
		}
	}
	if err := c.waitForLeader(15 * time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *testCluster) startNode(bin string, n *testNode, members string) error {
	log, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("node%d.log", n.id)))
	if err != nil {
		return err
	}
	defer log.Close()
	args := append([]string{"serve",
		"--node-id", fmt.Sprint(n.id),
		"--client-addr", n.clientAddr,
		"--peer-addr", n.peerAddr,
		"--cluster-members", members}, c.opts.args...)
	n.cmd = exec.Command(bin, args...)
	// Only the flags configure the node: no LEASEHOLD_* settings from the environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LEASEHOLD_") {
			n.cmd.Env = append(n.cmd.Env, kv)
		}
	}
	n.cmd.Stdout, n.cmd.Stderr = log, log
	n.cmd.SysProcAttr = childAttr()
	if err := spawn(n.cmd); err != nil {
		return fmt.Errorf("starting node %d: %w", n.id, err)
	}
	go func() {
		_ = n.cmd.Wait()
		close(n.exited)
	}()
	return nil
}

// spawnRequests go to one goroutine locked to its OS thread, which starts every node: a
// child's parent-death signal (childAttr) fires when the thread that started it exits,
// and this one lives as long as the test process, so the nodes die with the process even
// if a test panics or times out.
var (
	spawnOnce     sync.Once
	spawnRequests = make(chan spawnRequest)
)

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread()
			for r := range spawnRequests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error)
	spawnRequests <- spawnRequest{cmd, done}
	return <-done
}

func freePorts(n int) ([]string, error) {
	var addrs []string
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// waitForLeader polls GET /v1/cluster on every node until all name the same leader.
func (c *testCluster) waitForLeader(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	if c.opts.ca != nil {
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.opts.ca}}
		defer client.CloseIdleConnections()
	}
	var seen []string
	for time.Now().Before(deadline) {
		seen = seen[:0]
		var leaders []uint64
		for _, n := range c.nodes {
			if n.paused || n.killed {
				continue
			}
			if n.gone() {
				return fmt.Errorf("node %d exited; its log:\n%s", n.id, c.logTail(n))
			}
			var status struct {
				LeaderID *uint64 `json:"leader_id"`
			}
			req, _ := http.NewRequest(http.MethodGet, c.url(n)+"/v1/cluster", nil)
			if c.opts.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.opts.token)
			}
			resp, err := client.Do(req)
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&status)
				resp.Body.Close()
			}
			switch {
			case err != nil:
				seen = append(seen, fmt.Sprintf("node %d: %v", n.id, err))
			case status.LeaderID == nil:
				seen = append(seen, fmt.Sprintf("node %d: no leader", n.id))
			default:
				leaders = append(leaders, *status.LeaderID)
			}
		}
		if len(seen) == 0 && len(leaders) > 0 && allEqual(leaders) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no leader within %v: %v (logs in %s)", timeout, seen, c.dir)
}

func allEqual(xs []uint64) bool {
	for _, x := range xs {
		if x != xs[0] {
			return false
		}
	}
	return true
}

func (c *testCluster) logTail(n *testNode) string {
	b, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("node%d.log", n.id)))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (n *testNode) gone() bool {
	select {
	case <-n.exited:
		return true
	default:
		return false
	}
}

func (c *testCluster) url(n *testNode) string { return c.opts.scheme() + "://" + n.clientAddr }

// urls are the client endpoints of every node, node 1 first.
func (c *testCluster) urls() []string {
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, c.url(n))
	}
	return urls
}

// kill sends SIGKILL to node i (0-based) and waits for it to exit.
func (c *testCluster) kill(i int) {
	n := c.nodes[i]
	n.killed = true
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// pause stops node i with SIGSTOP; resume continues it.
func (c *testCluster) pause(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.nodes[i].cmd.Process.Signal(syscall.SIGSTOP)
	c.nodes[i].paused = true
}

func (c *testCluster) resume(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.nodes[i].cmd.Process.Signal(syscall.SIGCONT)
	c.nodes[i].paused = false
}

// stop continues paused nodes, kills every node and removes the logs.
func (c *testCluster) stop() {
	for i, n := range c.nodes {
		if n.cmd == nil || n.cmd.Process == nil {
			continue
		}
		if n.paused {
			c.resume(i)
		}
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
	os.RemoveAll(c.dir)
}

// newClient makes a client of endpoints that logs to the test, released and closed when
// the test ends.
func newClient(t *testing.T, endpoints []string, defaults ...LockOption) *Client {
	t.Helper()
	return newClientWith(t, Config{Endpoints: endpoints}, defaults...)
}

// newClientWith is newClient with a whole configuration.
func newClientWith(t *testing.T, cfg Config, defaults ...LockOption) *Client {
	t.Helper()
	logger := &testLogger{t: t}
	cfg.Logger = logger
	c, err := New(cfg, defaults...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
		logger.off()
	})
	return c
}

// testLogger logs to the test until the test ends (renewal goroutines may outlive it).
type testLogger struct {
	mu       sync.Mutex
	t        *testing.T
	disabled bool
}

func (l *testLogger) Printf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.disabled {
		l.t.Logf(format, v...)
	}
}

func (l *testLogger) off() {
	l.mu.Lock()
	l.disabled = true
	l.mu.Unlock()
}

// testKey is a key of its own for each test, so tests never share one.
func testKey(t *testing.T, name string) string {
	return strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "/" + name + "-" + randomHex(3)
}

// ctxFor is a context that ends with the test, at the latest after d.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 20 ms until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// receiveLost waits up to timeout for the hold's loss and returns its reason.
func receiveLost(t *testing.T, l *Lock, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-l.Lost():
		if err == nil {
			t.Fatalf("Lost() closed without a reason (state %v)", l.State())
		}
		return err
	case <-time.After(timeout):
		t.Fatalf("Lost() did not fire within %v (state %v)", timeout, l.State())
	}
	return nil
}

// asError returns err's *Error, failing the test if it has none.
func asError(t *testing.T, err error) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("%v (%T) is not a *leasehold.Error", err, err)
	}
	return e
}
