package lockd

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// logBuf collects log lines; safe for concurrent use.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testConfig parses a configuration with lock_path and ratelimit_path in
// dir, and extra lines (a later line wins).
func testConfig(t testing.TB, dir string, extra ...string) *config.Config {
	t.Helper()
	text := "mode fixed\nfixed_server 127.0.0.1\nproxy_name gate.test\n" +
		"lock_path " + filepath.Join(dir, "lock") + "\n" +
		"ratelimit_path " + filepath.Join(dir, "rate") + "\n" +
		strings.Join(extra, "\n") + "\n"
	cfg, err := config.Parse(strings.NewReader(text), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// testServer is a lockd without its process: the files in a temporary
// directory, lockd's user the test's.
func testServer(t testing.TB, extra ...string) (*server, *logBuf) {
	t.Helper()
	dir := t.TempDir()
	cfg := testConfig(t, dir, extra...)
	for _, d := range []string{cfg.LockPath, cfg.RatelimitPath} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lb := &logBuf{}
	log := logx.To(lb, logx.Debug)
	s := &server{log: log, uid: os.Geteuid(), script: newScriptRunner(log)}
	s.cfg.Store(cfg)
	t.Cleanup(s.script.wg.Wait)
	return s, lb
}

// setConfig replaces the server's configuration, keeping its directories.
func (s *server) setConfig(t testing.TB, extra ...string) {
	t.Helper()
	dir := filepath.Dir(s.cfg.Load().LockPath)
	s.cfg.Store(testConfig(t, dir, extra...))
}

var (
	cli4   = netip.MustParseAddrPort("192.0.2.1:40000")
	cli4b  = netip.MustParseAddrPort("192.0.2.2:40001")
	cli6   = netip.MustParseAddrPort("[2001:db8::1]:40002")
	local4 = netip.MustParseAddrPort("192.0.2.254:9199")
	mta4   = netip.MustParseAddrPort("198.51.100.7:25")
)

// ask sends a Policy request and fails on Err.
func ask(t testing.TB, s *server, q *ipc.Policy) *ipc.PolicyAnswer {
	t.Helper()
	a := s.policy(q)
	if a.Err != "" {
		t.Fatalf("policy %+v: %s", q, a.Err)
	}
	return a
}

// record reads the rate-limit record of c.
func (s *server) testRecord(t testing.TB, ap netip.AddrPort, ident string) *record {
	t.Helper()
	c, err := newClient(ap.Addr(), ident)
	if err != nil {
		t.Fatal(err)
	}
	r, err := readRecord(filepath.Join(s.cfg.Load().RatelimitPath, c.fileName()))
	if err != nil || r == nil {
		t.Fatalf("record of %v: %v, %v", c, r, err)
	}
	return r
}
