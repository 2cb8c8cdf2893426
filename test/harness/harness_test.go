package harness_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// fakeDaemonEnv makes the test binary play a minimal smtp-gated (see
// fakeDaemon): the Daemon API is tested without depending on the real one.
const fakeDaemonEnv = "HARNESS_FAKE_DAEMON"

func TestMain(m *testing.M) {
	if os.Getenv(fakeDaemonEnv) == "1" {
		fakeDaemon()
		return
	}
	harness.Main(m)
}

func TestPostfixDeliversAndAdvertises(t *testing.T) {
	p := harness.Postfix(t)
	c := harness.Dial(t, p.Addr)
	c.Expect(220)
	exts := c.Ehlo("client.test")
	for _, want := range []string{"PIPELINING", "STARTTLS", "AUTH", "XCLIENT", "XFORWARD", "8BITMIME", "ENHANCEDSTATUSCODES"} {
		if !harness.HasExt(exts, want) {
			t.Errorf("EHLO reply lacks %s: %q", want, exts)
		}
	}
	for _, want := range []string{"SIZE 52428800", "AUTH PLAIN LOGIN"} {
		if !strings.Contains(strings.Join(exts, "\n"), want) {
			t.Errorf("EHLO reply lacks %q: %q", want, exts)
		}
	}
	tok := harness.Token(t)
	body := append(harness.Message("sender@example.com", "anyone@example.org", tok),
		".leading dot\r\n..two dots\r\n.\r\nbare lf line\nlast line without newline"...)
	reply := c.SendMail("sender@example.com", []string{"anyone@example.org"}, body)
	if !strings.Contains(reply, "queued") {
		t.Errorf("final reply %q, want Postfix's queued", reply)
	}
	c.Quit()
	path := p.WaitDelivered(t, tok, 10*time.Second)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Postfix stores lines with LF; the dots must be back to what was sent.
	for _, want := range []string{"\n.leading dot\n", "\n..two dots\n", "\n.\n", "\nbare lf line\n", "\nlast line without newline\n"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("delivered message lacks %q (dot-stuffing?):\n%s", want, got)
		}
	}
	if ms := p.Messages(); len(ms) == 0 {
		t.Errorf("Messages() is empty after a delivery")
	}
	if !strings.Contains(p.Log(), "status=sent") {
		t.Errorf("maillog has no status=sent:\n%s", p.Log())
	}
}

func TestPostfixPipeliningAndRules(t *testing.T) {
	p := harness.Postfix(t)
	c := harness.Dial(t, p.Addr)
	c.Expect(220)
	c.Ehlo("client.test")
	tok := harness.Token(t)
	c.SendMailPipelined("s@example.com", []string{"a@x.example", "b@y.example"}, harness.Message("s@example.com", "a@x.example", tok))
	// Several transactions in one session, and the test rules.
	c.Cmd("MAIL FROM:<s@example.com>", 250)
	if r := c.Cmd("RCPT TO:<reject@x.example>", 550); !strings.Contains(r, "5.1.1") {
		t.Errorf("reject@: %q", r)
	}
	if r := c.Cmd("RCPT TO:<tempfail@x.example>", 450); !strings.Contains(r, "4.2.0") {
		t.Errorf("tempfail@: %q", r)
	}
	c.Cmd("RSET", 250)
	c.Cmd("MAIL FROM:<s@example.com> SIZE=999999999", 552)
	c.Quit()
	path := p.WaitDelivered(t, tok, 10*time.Second)
	b, _ := os.ReadFile(path)
	// one delivery per recipient into the same Maildir: two files carry the token
	n := 0
	for _, m := range p.Messages() {
		if mb, _ := os.ReadFile(m); bytes.Contains(mb, []byte(tok)) {
			n++
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for n < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = 0
		for _, m := range p.Messages() {
			if mb, _ := os.ReadFile(m); bytes.Contains(mb, []byte(tok)) {
				n++
			}
		}
	}
	if n != 2 {
		t.Errorf("got %d deliveries of the pipelined message, want 2 (one per recipient):\n%s", n, b)
	}
	p.NotDelivered(t, "never-sent-"+tok, 50*time.Millisecond)
}

func TestPostfixStartTLSAndAuth(t *testing.T) {
	p := harness.Postfix(t)
	pem, err := os.ReadFile(p.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", p.CACert)
	}
	c := harness.Dial(t, p.Addr)
	c.Expect(220)
	c.Ehlo("client.test")
	c.StartTLS(&tls.Config{RootCAs: pool, ServerName: "peers.localdomain"})
	exts := c.Ehlo("client.test")
	if harness.HasExt(exts, "STARTTLS") {
		t.Errorf("STARTTLS still advertised inside TLS: %q", exts)
	}
	c.AuthPlain(p.User, p.Pass, 235)
	tok := harness.Token(t)
	c.SendMail("s@example.com", []string{"auth@x.example"}, harness.Message("s@example.com", "auth@x.example", tok))
	c.Quit()
	path := p.WaitDelivered(t, tok, 10*time.Second)
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("Authenticated sender")) && !bytes.Contains(b, []byte("ESMTPSA")) {
		t.Errorf("delivered message does not show the authenticated TLS session:\n%s", b)
	}

	bad := harness.Dial(t, p.Addr)
	bad.Expect(220)
	bad.Ehlo("client.test")
	bad.AuthPlain(p.User, "wrong", 535)
	bad.Quit()
}

func TestPostfixXCLIENT(t *testing.T) {
	p := harness.Postfix(t)
	c := harness.Dial(t, p.Addr)
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("XCLIENT ADDR=192.0.2.55 NAME=mx.client.example", 220)
	c.Ehlo("client.test")
	tok := harness.Token(t)
	c.SendMail("s@example.com", []string{"xc@x.example"}, harness.Message("s@example.com", "xc@x.example", tok))
	c.Quit()
	b, _ := os.ReadFile(p.WaitDelivered(t, tok, 10*time.Second))
	if !bytes.Contains(b, []byte("mx.client.example [192.0.2.55]")) {
		t.Errorf("Received: header does not carry the XCLIENT address:\n%s", b)
	}
}

func TestPostfixIPv6(t *testing.T) {
	p := harness.Postfix(t)
	if p.Addr6 == "" {
		t.Skip("no IPv6 loopback on this machine")
	}
	c := harness.Dial(t, p.Addr6)
	c.Expect(220)
	c.Ehlo("client.test")
	tok := harness.Token(t)
	c.SendMail("s@example.com", []string{"v6@x.example"}, harness.Message("s@example.com", "v6@x.example", tok))
	c.Quit()
	p.WaitDelivered(t, tok, 10*time.Second)
}

func TestPostfixIsShared(t *testing.T) {
	a, b := harness.Postfix(t), harness.Postfix(t)
	if a != b {
		t.Fatalf("Postfix returned two instances (%s, %s), want the shared one", a.Addr, b.Addr)
	}
}

func TestTwoPostfixInstances(t *testing.T) {
	shared := harness.Postfix(t)
	private := harness.NewPostfix(t)
	if private.Addr == shared.Addr || private.Dir == shared.Dir {
		t.Fatalf("private instance %s (%s) collides with the shared one %s (%s)", private.Addr, private.Dir, shared.Addr, shared.Dir)
	}
	t.Logf("private Postfix started in %v", private.StartTime)
	tok := harness.Token(t)
	for _, p := range []*harness.PostfixServer{shared, private} {
		c := harness.Dial(t, p.Addr)
		c.Expect(220)
		c.Ehlo("client.test")
		c.SendMail("s@example.com", []string{"two@x.example"}, harness.Message("s@example.com", "two@x.example", tok+"-"+p.Addr))
		c.Quit()
	}
	shared.WaitDelivered(t, tok+"-"+shared.Addr, 10*time.Second)
	private.WaitDelivered(t, tok+"-"+private.Addr, 10*time.Second)
	private.NotDelivered(t, tok+"-"+shared.Addr, 50*time.Millisecond)

	pid := private.MasterPid
	if err := private.Stop(); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Errorf("private Postfix master %d still alive after Stop", pid)
	}
	if _, err := net.DialTimeout("tcp", private.Addr, time.Second); err == nil {
		t.Errorf("%s still accepts connections after Stop", private.Addr)
	}
	if _, err := os.Stat(private.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop", private.Dir)
	}
	// the shared one is unaffected
	c := harness.Dial(t, shared.Addr)
	c.Expect(220)
	c.Quit()
}

// alive: /proc has pid and it is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) < i+3 || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func fakeOpts() []harness.Option {
	return []harness.Option{harness.WithBinary(os.Args[0]), harness.WithEnv(fakeDaemonEnv + "=1")}
}

func TestDaemonLifecycle(t *testing.T) {
	d := harness.StartDaemon(t, "hello=1\n", fakeOpts()...)
	line := d.WaitLog(t, regexp.MustCompile(`^started config=hello=1 fg=true`), 5*time.Second)
	ready := d.WaitNotify(t, "READY=1", time.Second)
	if ready.Pid != d.Pid() {
		t.Errorf("READY=1 came from pid %d, want the daemon %d", ready.Pid, d.Pid())
	}
	kids := harness.ChildPids(d.Pid())
	if len(kids) != 1 || !strings.Contains(line, fmt.Sprintf("child=%d", kids[0])) {
		t.Errorf("ChildPids(%d) = %v, want the child of %q", d.Pid(), kids, line)
	}
	if got := harness.ProcessGroup(d.Pid()); len(got) != 2 {
		t.Errorf("ProcessGroup(%d) = %v, want the daemon and its child", d.Pid(), got)
	}

	if err := os.WriteFile(d.ConfigFile(), []byte("hello=2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := d.Mark()
	n := d.Reload(t)
	if n.Value("MONOTONIC_USEC") == "" {
		t.Errorf("RELOADING notification %q has no MONOTONIC_USEC", n.Text)
	}
	d.WaitLogAfter(t, m, regexp.MustCompile(`^reloaded config=hello=2$`), 5*time.Second)
	if got := d.LogSince(m); len(got) != 1 {
		t.Errorf("LogSince(mark) = %q, want the one reload line", got)
	}

	m = d.Mark()
	if code := d.Stop(t); code != 0 {
		t.Errorf("Stop: exit code %d, want 0", code)
	}
	d.WaitNotifyAfter(t, m, "STOPPING=1", time.Second)
	for _, p := range kids {
		if alive(p) {
			t.Errorf("child %d alive after the daemon stopped", p)
		}
	}
}

func TestDaemonStartFailure(t *testing.T) {
	d := harness.StartDaemon(t, "fail=1\n", append(fakeOpts(), harness.WithoutReady(), harness.WithArgs("-x"))...)
	if code := d.WaitExit(t, 10*time.Second); code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	d.WaitLog(t, regexp.MustCompile(`bad config: fail=1 args=\[-f -x `), time.Second)
}

func TestDaemonCleanupKillsProcessGroup(t *testing.T) {
	var pids []int
	t.Run("run", func(t *testing.T) {
		d := harness.StartDaemon(t, "hello=1\n", fakeOpts()...)
		pids = append([]int{d.Pid()}, harness.Descendants(d.Pid())...)
		if len(pids) != 2 {
			t.Fatalf("daemon %d has descendants %v, want one", d.Pid(), pids[1:])
		}
		// the test ends with the daemon running: Cleanup must kill it all
	})
	for _, p := range pids {
		if alive(p) {
			t.Errorf("pid %d survived the test's cleanup", p)
		}
	}
}

func TestFreePortAndToken(t *testing.T) {
	p := harness.FreePort(t)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatalf("FreePort gave %d, which cannot be bound: %v", p, err)
	}
	l.Close()
	a, b := harness.Token(t), harness.Token(t)
	if a == b || !strings.HasPrefix(a, "tok-TestFreePortAndToken-") {
		t.Errorf("Token: %q, %q", a, b)
	}
}

func TestDotStuff(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ".\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"x\n.y\n..z\r\n", "x\r\n..y\r\n...z\r\n.\r\n"},
	} {
		if got := string(harness.DotStuff([]byte(tc.in))); got != tc.want {
			t.Errorf("DotStuff(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRealBinariesBuild builds cmd/smtp-gated and cmd/smtpgatectl once they
// exist, and checks that a second request reuses the first build.
func TestRealBinariesBuild(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dir   string
		build func(testing.TB) string
	}{
		{"smtp-gated", harness.DaemonBinary},
		{"smtpgatectl", harness.CtlBinary},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			if gos, _ := filepath.Glob(filepath.Join(root, "cmd", tc.dir, "*.go")); len(gos) == 0 {
				t.Skipf("cmd/%s has no Go files yet", tc.dir)
			}
			bin := tc.build(t)
			fi, err := os.Stat(bin)
			if err != nil || fi.Mode()&0o111 == 0 {
				t.Fatalf("built binary %s: %v", bin, err)
			}
			if again := tc.build(t); again != bin {
				t.Errorf("second build gave %s, want the cached %s", again, bin)
			}
		})
	}
}

// fakeDaemon plays a minimal smtp-gated: `-f [args] CONFIG`; logs to stderr;
// READY=1 when up; HUP -> RELOADING=1 + MONOTONIC_USEC, re-read, READY=1;
// TERM -> STOPPING=1, exit 0. A config containing "fail=1" exits 3 at once.
// It keeps one child process (sleep) like the real daemon keeps workers.
func fakeDaemon() {
	args := os.Args[1:]
	cfg := args[len(args)-1]
	b, err := os.ReadFile(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	conf := strings.TrimSpace(string(b))
	if strings.Contains(conf, "fail=1") {
		fmt.Fprintf(os.Stderr, "bad config: %s args=%v\n", conf, args)
		os.Exit(3)
	}
	notify := func(s string) {
		c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "notify:", err)
			return
		}
		c.Write([]byte(s))
		c.Close()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	child := exec.Command("sleep", "1000")
	if err := child.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "started config=%s fg=%v child=%d\n", conf, args[0] == "-f", child.Process.Pid)
	notify("READY=1")
	for s := range sigs {
		switch s {
		case syscall.SIGHUP:
			notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", time.Now().UnixMicro()))
			b, _ := os.ReadFile(cfg)
			fmt.Fprintf(os.Stderr, "reloaded config=%s\n", strings.TrimSpace(string(b)))
			notify("READY=1")
		case syscall.SIGTERM:
			notify("STOPPING=1")
			child.Process.Kill()
			child.Wait()
			fmt.Fprintln(os.Stderr, "stopped")
			os.Exit(0)
		}
	}
}
