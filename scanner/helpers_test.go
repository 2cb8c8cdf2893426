package scanner

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/loadavg"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"

	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { harness.Main(m) }

// spoolHeader is the first line of every spool file the tests write, as
// the session worker writes it.
const spoolHeader = "X-Proxy-Spool-Info: src=192.0.2.1:40000, ident=, dst=198.51.100.7:25, trns=1\r\n"

// writeSpool writes a spool file (header line, then msg) in dir with the
// given mode and returns it opened read-only, as a session worker sends it.
func writeSpool(t testing.TB, dir string, msg []byte, mode os.FileMode) *os.File {
	t.Helper()
	f, err := os.CreateTemp(dir, "spool-")
	if err != nil {
		t.Fatal(err)
	}
	name := f.Name()
	if err := f.Chmod(mode); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(spoolHeader); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// privateSpool writes the spool file into t.TempDir(): a directory of mode
// 0700, owned by the test's user (root for the peer tests), the file 0600.
// clamd (user clamav) cannot open it by path.
func privateSpool(t testing.TB, msg []byte) *os.File {
	t.Helper()
	return writeSpool(t, t.TempDir(), msg, 0o600)
}

// testConfig is the default configuration with the tests' defaults:
// no load limit (the test machine may be busy), no scanner.
func testConfig() *config.Config {
	cfg := config.Default()
	cfg.SpamMaxLoad = 0
	return cfg
}

func clamdConfig(path string) *config.Config {
	cfg := testConfig()
	cfg.AntivirusType = config.AntivirusClamd
	cfg.AntivirusPath = path
	return cfg
}

func spamdConfig(path string) *config.Config {
	cfg := testConfig()
	cfg.AntispamType = config.AntispamSpamassassin
	cfg.AntispamPath = path
	return cfg
}

// logBuf collects log lines, safe for concurrent use.
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

// scanLines returns the log lines that report a scan.
func (l *logBuf) scanLines() []string {
	var out []string
	for line := range strings.SplitSeq(l.String(), "\n") {
		if strings.Contains(line, "scan session=") {
			out = append(out, line)
		}
	}
	return out
}

// testEngine returns an engine for cfg logging into a buffer, with its
// private directory in t.TempDir().
func testEngine(t testing.TB, cfg *config.Config) (*engine, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	tmp := t.TempDir()
	os.Chmod(tmp, 0o711)
	e := &engine{cfg: cfg, log: logx.To(lb, logx.Debug), load: loadavg.Get,
		tempDir: func() (string, error) { return tmp, nil }}
	return e, lb
}

var testClient = netip.MustParseAddrPort("192.0.2.1:40000")

// scanWith runs one scan and checks that it logged exactly one scan line.
func scanWith(t testing.TB, e *engine, lb *logBuf, f *os.File, skip ...string) *ipc.Verdict {
	t.Helper()
	before := len(lb.scanLines())
	v := e.scan(context.Background(), &ipc.Scan{SessionID: 7, Transaction: 1, Client: testClient, Skip: skip}, f)
	if n := len(lb.scanLines()) - before; n != 1 {
		t.Errorf("the scan logged %d scan lines, want 1:\n%s", n, lb)
	}
	return v
}

// lastScanLine returns the last scan log line.
func (l *logBuf) lastScanLine() string {
	ls := l.scanLines()
	if len(ls) == 0 {
		return ""
	}
	return ls[len(ls)-1]
}

// message returns a plain message with token in it.
func message(token string) []byte {
	return harness.Message("a@example.com", "b@example.org", token)
}

// hamMessage is an ordinary message spamd scores a few points at most.
func hamMessage(token string) []byte {
	return fmt.Appendf(nil, "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\n"+
		"Subject: lunch tomorrow\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n\r\n"+
		"Hi Bob,\r\n\r\nare we still on for lunch tomorrow at noon? (%s)\r\n\r\nAlice\r\n", token, token)
}

// fakeServer listens on a unix socket in a short directory and runs serve
// for every connection; it stops with the test.
func fakeServer(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgs-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fake.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		os.RemoveAll(dir)
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				serve(c)
			}()
		}
	}()
	return path
}

// closeRights closes the descriptors of SCM_RIGHTS messages in oob.
func closeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for i := range msgs {
		if fds, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}
