package scanner

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

func bothConfig(clamdPath, spamdPath string) *config.Config {
	cfg := clamdConfig(clamdPath)
	cfg.AntispamType = config.AntispamSpamassassin
	cfg.AntispamPath = spamdPath
	return cfg
}

// Virus first: a virus ends the scan, spamd is not asked. Otherwise both
// run, in that order.
func TestScanOrder(t *testing.T) {
	c, s := harness.Clamd(t), harness.Spamd(t)
	e, lb := testEngine(t, bothConfig(c.Socket, s.Socket))
	tok := harness.Token(t)
	both := append(harness.SpamMessage("a@example.com", "b@example.org", tok), harness.EICAR()...)
	v := scanWith(t, e, lb, privateSpool(t, both))
	if v.Kind != ipc.VerdictVirus || !slices.Equal(v.Scanned, []string{"clamd"}) || v.Score != 0 {
		t.Errorf("virus and GTUBE: verdict %+v, want virus, scanned by clamd only", v)
	}
	v = scanWith(t, e, lb, privateSpool(t, harness.SpamMessage("a@example.com", "b@example.org", tok)))
	if v.Kind != ipc.VerdictSpam || !slices.Equal(v.Scanned, []string{"clamd", "spamd"}) {
		t.Errorf("GTUBE: verdict %+v, want spam, scanned by clamd then spamd", v)
	}
	v = scanWith(t, e, lb, privateSpool(t, hamMessage(tok)))
	if v.Kind != ipc.VerdictClean || !slices.Equal(v.Scanned, []string{"clamd", "spamd"}) {
		t.Errorf("ham: verdict %+v, want clean, scanned by clamd then spamd", v)
	}
	if line := lb.lastScanLine(); !strings.Contains(line, "scanners=clamd,spamd") || !strings.Contains(line, "score=") {
		t.Errorf("log line %q", line)
	}
}

// A scanner that fails makes an error verdict (the session decides about
// ignore_errors), unless the other one finds spam: then the spam verdict
// stands, and Err still tells about the failure.
func TestScanErrors(t *testing.T) {
	s := harness.Spamd(t)
	noClamd := filepath.Join(t.TempDir(), "no-clamd.sock")
	e, lb := testEngine(t, bothConfig(noClamd, s.Socket))
	tok := harness.Token(t)
	v := scanWith(t, e, lb, privateSpool(t, hamMessage(tok)))
	if v.Kind != ipc.VerdictError || !strings.HasPrefix(v.Err, "clamd: ") || !slices.Equal(v.Scanned, []string{"clamd", "spamd"}) {
		t.Errorf("clamd down, ham: verdict %+v, want error from clamd after both ran", v)
	}
	v = scanWith(t, e, lb, privateSpool(t, harness.SpamMessage("a@example.com", "b@example.org", tok)))
	if v.Kind != ipc.VerdictSpam || !strings.HasPrefix(v.Err, "clamd: ") {
		t.Errorf("clamd down, GTUBE: verdict %+v, want spam with clamd's error", v)
	}
}

// auth_skip: the session names the scans it does not want.
func TestScanSkip(t *testing.T) {
	c, s := harness.Clamd(t), harness.Spamd(t)
	e, lb := testEngine(t, bothConfig(c.Socket, s.Socket))
	tok := harness.Token(t)
	virus := harness.VirusMessage("a@example.com", "b@example.org", tok)
	spam := harness.SpamMessage("a@example.com", "b@example.org", tok)
	for _, tc := range []struct {
		skip    []string
		msg     []byte
		kind    ipc.VerdictKind
		scanned []string
	}{
		{[]string{"antivir"}, virus, ipc.VerdictClean, []string{"spamd"}},
		{[]string{"antispam"}, spam, ipc.VerdictClean, []string{"clamd"}},
		{[]string{"antivir", "antispam"}, append(spam, harness.EICAR()...), ipc.VerdictClean, nil},
		{[]string{"antispam"}, virus, ipc.VerdictVirus, []string{"clamd"}},
	} {
		v := scanWith(t, e, lb, privateSpool(t, tc.msg), tc.skip...)
		if v.Kind != tc.kind || !slices.Equal(v.Scanned, tc.scanned) {
			t.Errorf("skip %q: verdict %+v, want %s scanned by %q", tc.skip, v, tc.kind, tc.scanned)
		}
		// (A virus ends the scan before spamd would be skipped.)
		if v.Kind != ipc.VerdictVirus && !strings.Contains(lb.lastScanLine(), "(auth_skip)") {
			t.Errorf("skip %q: log line %q does not say so", tc.skip, lb.lastScanLine())
		}
	}
}

// No scanner configured: clean, nothing scanned.
func TestScanNothingConfigured(t *testing.T) {
	e, lb := testEngine(t, testConfig())
	v := scanWith(t, e, lb, privateSpool(t, append(message("x"), harness.EICAR()...)))
	if v.Kind != ipc.VerdictClean || len(v.Scanned) != 0 {
		t.Errorf("verdict %+v, want clean", v)
	}
	if !strings.Contains(lb.lastScanLine(), "scanners=none") {
		t.Errorf("log line %q", lb.lastScanLine())
	}
}

// The descriptor a session sends must be a regular file open read-only.
func TestSpoolChecks(t *testing.T) {
	dir := t.TempDir()
	rw, err := os.OpenFile(filepath.Join(dir, "rw"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	e, lb := testEngine(t, testConfig())
	for _, tc := range []struct {
		name string
		f    *os.File
		want string
	}{
		{"writable", rw, "open for writing"},
		{"pipe", pr, "not a regular file"},
		{"none", nil, "no descriptor"},
	} {
		v := scanWith(t, e, lb, tc.f)
		if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, tc.want) {
			t.Errorf("%s: verdict %+v, want an error with %q", tc.name, v, tc.want)
		}
	}
}

func TestOpenSpool(t *testing.T) {
	dir := t.TempDir()
	long := "X-Proxy-Spool-Info: " + strings.Repeat("x", maxSpoolHeader) + "\r\nbody\r\n"
	for _, tc := range []struct {
		name, content, header string
		body                  int64
		err                   string
	}{
		{"crlf", "X-Proxy-Spool-Info: src=1\r\nFrom: a\r\n", "X-Proxy-Spool-Info", 27, ""},
		{"lf", "X-Proxy-Spool-Info: src=1\nFrom: a\r\n", "X-Proxy-Spool-Info", 26, ""},
		{"case", "x-proxy-spool-info: src=1\r\nFrom: a\r\n", "X-Proxy-Spool-Info", 27, ""},
		{"other header", "X-Other: src=1\r\nFrom: a\r\n", "X-Proxy-Spool-Info", 0, ""},
		{"no header configured", "X-Proxy-Spool-Info: src=1\r\nFrom: a\r\n", "", 0, ""},
		{"header only", "X-Proxy-Spool-Info: src=1", "X-Proxy-Spool-Info", 25, ""},
		{"empty", "", "X-Proxy-Spool-Info", 0, ""},
		{"too long", long, "X-Proxy-Spool-Info", 0, "longer than"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		os.WriteFile(path, []byte(tc.content), 0o600)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		sp, err := openSpool(f, tc.header)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case sp.body != tc.body || sp.msgSize() != int64(len(tc.content))-tc.body:
			t.Errorf("%s: body at %d (size %d), want %d", tc.name, sp.body, sp.msgSize(), tc.body)
		}
		f.Close()
	}
}

// The whole path a session worker takes: MsgScan with the spool file's
// descriptor over a link, MsgVerdict back; the descriptor is closed by the
// scanner; an unexpected message ends the link with a log line.
func TestDispatch(t *testing.T) {
	lb := &logBuf{}
	s := &server{env: &child.Env{Role: ipc.RoleScanner, Log: logx.To(lb, logx.Debug)}}
	s.cfg.Store(testConfig()) // no scanner: clean, and quick
	ca, cb, err := ipc.ConnPair()
	if err != nil {
		t.Fatal(err)
	}
	scannerSide := ipc.NewPeer(cb, "session 0", s.fromSession)
	ended := make(chan error, 1)
	go func() { ended <- scannerSide.Run() }()
	session := ipc.NewPeer(ca, "scanner", func(p *ipc.Peer, m *ipc.Msg) { m.Close() })
	go session.Run()
	defer session.Close()

	f := privateSpool(t, message("x"))
	fds := openFDs(t)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		m, err := session.Call(ctx, ipc.MsgScan, &ipc.Scan{SessionID: 42, Transaction: i + 1, Size: 10, Client: testClient}, ipc.MsgVerdict, fdOf(t, f))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if v := m.Payload.(*ipc.Verdict); v.Kind != ipc.VerdictClean {
			t.Errorf("verdict %+v, want clean", v)
		}
	}
	// The scanner's copies of the descriptor are closed once it answered.
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) != fds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := openFDs(t); n != fds {
		t.Errorf("%d descriptors open after the scans, %d before", n, fds)
	}
	if !strings.Contains(lb.String(), "scan session=42 trns=3") {
		t.Errorf("no scan line in the log:\n%s", lb)
	}

	// A session worker has no business sending this.
	if err := session.Send(ipc.MsgAck, &ipc.Ack{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("link ended: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the link survived an unexpected message")
	}
	if !strings.Contains(lb.String(), "unexpected ACK from session 0") {
		t.Errorf("no log line about the unexpected message:\n%s", lb)
	}
}

// fdOf is f's descriptor, without Fd's switch to blocking mode.
func fdOf(t *testing.T, f *os.File) int {
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// A spool file shorter than the message the session says it holds (writes
// not flushed before MsgScan) is an error, never a clean verdict on part
// of the message. Longer is fine (and Size 0 means unknown).
func TestScanSpoolShorterThanSize(t *testing.T) {
	e, lb := testEngine(t, testConfig())
	msg := message("x")
	for _, tc := range []struct {
		size int64
		want ipc.VerdictKind
	}{
		{int64(len(msg)) + 1, ipc.VerdictError},
		{int64(len(msg)), ipc.VerdictClean},
		{int64(len(msg)) - 1, ipc.VerdictClean},
		{0, ipc.VerdictClean},
	} {
		v := e.scan(context.Background(), &ipc.Scan{SessionID: 1, Transaction: 1, Size: tc.size}, privateSpool(t, msg))
		if v.Kind != tc.want || (tc.want == ipc.VerdictError && !strings.Contains(v.Err, "not flushed")) {
			t.Errorf("Size %d for a %d-byte message: verdict %+v, want %s", tc.size, len(msg), v, tc.want)
		}
	}
	if !strings.Contains(lb.String(), "verdict=error") {
		t.Errorf("log:\n%s", lb)
	}
}
