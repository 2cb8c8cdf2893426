package scanner

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

// askClamd sends one raw command to clamd and returns the answer.
func askClamd(t *testing.T, addr, cmd string) string {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, cmd); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return strings.TrimRight(string(b), "\x00\n")
}

// The point of FILDES: the spool file is root's, mode 0600, in a 0700
// directory; clamd (user clamav) cannot open it by path, and scans it all
// the same through the descriptor.
func TestClamdFildesUnreadableByPath(t *testing.T) {
	c := harness.Clamd(t)
	f := privateSpool(t, harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))
	if os.Geteuid() != 0 {
		t.Fatal("the harness should have skipped: clamd needs root")
	}
	if got := askClamd(t, c.Socket, "zSCAN "+f.Name()+"\x00"); !strings.HasSuffix(got, "ERROR") {
		t.Fatalf("clamd SCAN by path of a root-only file answered %q, want an ERROR (the test proves nothing otherwise)", got)
	}
	e, lb := testEngine(t, clamdConfig(c.Socket))
	v := scanWith(t, e, lb, f)
	if v.Kind != ipc.VerdictVirus || v.Name == "" || v.Err != "" {
		t.Fatalf("verdict %+v, want virus with a name\n%s", v, lb)
	}
	if !slices.Equal(v.Scanned, []string{"clamd"}) {
		t.Errorf("Scanned %q, want [clamd]", v.Scanned)
	}
	line := lb.lastScanLine()
	for _, want := range []string{"verdict=virus", `name="` + v.Name + `"`, "scanners=clamd", "time=", "size=", "src=192.0.2.1:40000"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

// Both transports, the same verdicts: FILDES over the unix socket,
// INSTREAM over TCP.
func TestClamdVerdicts(t *testing.T) {
	c := harness.Clamd(t)
	tok := harness.Token(t)
	msgs := []struct {
		name  string
		msg   []byte
		virus bool
	}{
		{"clean", message(tok), false},
		{"attachment", harness.VirusMessage("a@example.com", "b@example.org", tok), true},
		{"inline", append(message(tok), harness.EICAR()...), true},
		{"marker", append(message(tok), "\r\n"+harness.ClamdMarker+"\r\n"...), true},
		{"empty", nil, false},
	}
	for _, tr := range []struct{ name, addr string }{{"fildes", c.Socket}, {"instream", c.Addr}} {
		t.Run(tr.name, func(t *testing.T) {
			e, lb := testEngine(t, clamdConfig(tr.addr))
			names := map[string]string{}
			for _, m := range msgs {
				v := scanWith(t, e, lb, privateSpool(t, m.msg))
				want := ipc.VerdictClean
				if m.virus {
					want = ipc.VerdictVirus
				}
				if v.Kind != want || v.Err != "" || (m.virus && v.Name == "") || (!m.virus && v.Name != "") {
					t.Errorf("%s: verdict %+v, want %s", m.name, v, want)
				}
				names[m.name] = v.Name
			}
			// Two signatures, two names; never compared with a literal.
			if names["marker"] == names["attachment"] {
				t.Errorf("the marker and EICAR have the same name %q", names["marker"])
			}
		})
	}
}

// scan_max_size: bigger messages are not virus-scanned, and the log says so.
func TestClamdScanMaxSize(t *testing.T) {
	c := harness.Clamd(t)
	msg := harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t))
	cfg := clamdConfig(c.Socket)
	cfg.ScanMaxSize = uint64(len(msg)) - 1
	e, lb := testEngine(t, cfg)
	v := scanWith(t, e, lb, privateSpool(t, msg))
	if v.Kind != ipc.VerdictClean || len(v.Scanned) != 0 {
		t.Fatalf("verdict %+v, want clean and nothing scanned", v)
	}
	if line := lb.lastScanLine(); !strings.Contains(line, "skipped=clamd(scan_max_size)") {
		t.Errorf("log line %q does not say why clamd was skipped", line)
	}
	// At the limit exactly: scanned. (The size is the message's, without
	// the spool header line.)
	cfg.ScanMaxSize = uint64(len(msg))
	if v := scanWith(t, e, lb, privateSpool(t, msg)); v.Kind != ipc.VerdictVirus {
		t.Errorf("at scan_max_size: verdict %+v, want virus", v)
	}
}

// scan_max_size 0 turns the virus scan off (1.4, and the manual): not
// "no limit".
func TestClamdScanMaxSizeZero(t *testing.T) {
	cfg := clamdConfig(filepath.Join(t.TempDir(), "no-clamd.sock")) // never asked
	cfg.ScanMaxSize = 0
	e, lb := testEngine(t, cfg)
	v := scanWith(t, e, lb, privateSpool(t, message("x")))
	if v.Kind != ipc.VerdictClean || len(v.Scanned) != 0 || v.Err != "" {
		t.Fatalf("verdict %+v, want clean and nothing scanned", v)
	}
	if line := lb.lastScanLine(); !strings.Contains(line, "skipped=clamd(scan_max_size=0)") {
		t.Errorf("log line %q does not say why clamd was skipped", line)
	}
}

// A clamd that is down: an error at once, saying why.
func TestClamdAbsent(t *testing.T) {
	for _, addr := range []string{
		filepath.Join(t.TempDir(), "no-clamd.sock"),
		"127.0.0.1:" + closedPort(t),
	} {
		e, lb := testEngine(t, clamdConfig(addr))
		t0 := time.Now()
		v := scanWith(t, e, lb, privateSpool(t, message("x")))
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("%s: took %v, want an immediate error", addr, d)
		}
		if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "clamd") || !strings.Contains(v.Err, "connect") {
			t.Errorf("%s: verdict %+v, want an error about connecting to clamd", addr, v)
		}
		if line := lb.lastScanLine(); !strings.Contains(line, "verdict=error") || !strings.Contains(line, "err=") {
			t.Errorf("log line %q does not report the error", line)
		}
	}
}

// closedPort returns a TCP port on 127.0.0.1 nobody listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	return port
}

// Fakes for the states a real clamd will not show on demand.
func TestClamdFaults(t *testing.T) {
	cases := []struct {
		name  string
		serve func(net.Conn)
		want  string // in Err
		min   time.Duration
	}{
		{"never answers", func(c net.Conn) { io.Copy(io.Discard, c) }, "no answer within 1s", 900 * time.Millisecond},
		{"garbage", func(c net.Conn) { readCmd(c); c.Write([]byte("\x01\x02\xff binary\x00")) }, "unreadable answer", 0},
		{"unknown answer", func(c net.Conn) { readCmd(c); c.Write([]byte("fd[3]: MAYBE\x00")) }, "unexpected answer", 0},
		{"dies mid-scan", func(c net.Conn) { readCmd(c) }, "closed without an answer", 0},
		{"error", func(c net.Conn) { readCmd(c); c.Write([]byte("fd[3]: lstat() failed: Permission denied. ERROR\x00")) }, "lstat() failed", 0},
		{"endless", func(c net.Conn) {
			readCmd(c)
			c.Write(bytes.Repeat([]byte("x"), 2*maxReply))
		}, "unreadable answer", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := fakeServer(t, tc.serve)
			cfg := clamdConfig(path)
			cfg.TimeoutScanner = 1
			e, lb := testEngine(t, cfg)
			t0 := time.Now()
			v := scanWith(t, e, lb, privateSpool(t, message("x")))
			d := time.Since(t0)
			if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, tc.want) {
				t.Errorf("verdict %+v, want an error with %q", v, tc.want)
			}
			if d < tc.min || d > tc.min+2*time.Second {
				t.Errorf("took %v, want about %v", d, tc.min)
			}
		})
	}
}

// readCmd reads the FILDES command and the byte carrying the descriptor
// (closing the descriptor).
func readCmd(c net.Conn) {
	uc := c.(*net.UnixConn)
	buf := make([]byte, 64)
	oob := make([]byte, 64)
	got := 0
	for got < len("zFILDES\x00")+1 {
		n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		closeRights(oob[:oobn])
		got += n
	}
}

// A clamd that was stopped and started again is found again by the next
// scan: nothing in the scanner process needs a restart.
func TestClamdRestart(t *testing.T) {
	c := harness.NewClamd(t)
	virus := harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t))
	engines := map[string]*engine{}
	logs := map[string]*logBuf{}
	for _, addr := range []string{c.Socket, c.Addr} {
		engines[addr], logs[addr] = testEngine(t, clamdConfig(addr))
	}
	check := func(want ipc.VerdictKind) {
		t.Helper()
		for addr, e := range engines {
			if v := scanWith(t, e, logs[addr], privateSpool(t, virus)); v.Kind != want {
				t.Errorf("%s: verdict %+v, want %s", addr, v, want)
			}
		}
	}
	check(ipc.VerdictVirus)
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	check(ipc.VerdictError)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	check(ipc.VerdictVirus)
}

// clamd refuses a stream over its StreamMaxLength while it is still being
// sent: the answer is read all the same.
func TestClamdInstreamTooLong(t *testing.T) {
	path := fakeServerTCP(t, func(c net.Conn) {
		b := make([]byte, 100)
		io.ReadFull(c, b)
		c.Write([]byte("INSTREAM size limit exceeded. ERROR\x00"))
	})
	e, lb := testEngine(t, clamdConfig(path))
	v := scanWith(t, e, lb, privateSpool(t, bytes.Repeat([]byte("0123456789abcdef\r\n"), 1<<16)))
	if v.Kind != ipc.VerdictError || !strings.Contains(v.Err, "size limit exceeded") {
		t.Errorf("verdict %+v, want clamd's size limit error", v)
	}
}

// fakeServerTCP is fakeServer on 127.0.0.1.
func fakeServerTCP(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			serve(c)
			c.Close()
		}
	}()
	return l.Addr().String()
}
