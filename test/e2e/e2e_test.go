// Package e2e drives the real smtp-gated binary against a real Postfix on
// loopback: relaying, supervision, signals, admission limits, privileges.
package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// setup is a Postfix, and a directory for one daemon's files.
type setup struct {
	pf   *harness.PostfixServer
	dir  string
	port int
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	pf := harness.Postfix(t)
	dir := harness.DaemonDir(t, "sge-")
	return &setup{pf: pf, dir: dir, port: harness.FreePort(t)}
}

// config is a fixed-mode configuration relaying to Postfix, with extra
// lines appended (a later line wins).
func (s *setup) config(extra ...string) string {
	return fmt.Sprintf(`mode fixed
fixed_server 127.0.0.1
fixed_server_port %d
bind_address 127.0.0.1
port %d
proxy_name test-proxy
pidfile %s/smtp-gated.pid
control_socket %s/control.sock
statefile %s/state
spool_path %s/spool
lock_path %s
ratelimit_path %s
log_level debug
session_workers 2
timeout_shutdown 30
max_load 0
%s
`, s.pf.Port, s.port, s.dir, s.dir, s.dir, s.dir, s.dir, s.dir, strings.Join(extra, "\n"))
}

func (s *setup) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

func (s *setup) start(t *testing.T, extra ...string) *harness.Daemon {
	t.Helper()
	return harness.StartDaemon(t, s.config(extra...))
}

// body makes a message carrying token whose lines are awkward for a relay:
// lines that start with a dot (one that is only a dot), long lines, blank
// lines, and random printable text.
func body(token string, r *rand.Rand, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <sender@example.com>\r\nTo: <rcpt@example.org>\r\nSubject: %s\r\n", token)
	fmt.Fprintf(&b, "Message-ID: <%s@test.invalid>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n", token)
	b.WriteString(".\r\n..two dots\r\n.leading dot\r\n\r\n")
	const chars = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?-_=+"
	for b.Len() < size {
		n := 1 + r.IntN(990)
		if r.IntN(10) == 0 {
			b.WriteByte('.')
		}
		for range n {
			b.WriteByte(chars[r.IntN(len(chars))])
		}
		b.WriteString("\r\n")
	}
	fmt.Fprintf(&b, "end of %s\r\n", token)
	return b.Bytes()
}

// delivered checks that the message Postfix stored ends with exactly the
// message that was sent (Postfix prepends its trace headers and stores
// lines with LF endings).
func delivered(t *testing.T, pf *harness.PostfixServer, token string, sent []byte) {
	t.Helper()
	path := pf.WaitDelivered(t, token, 30e9)
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.ReplaceAll(sent, []byte("\r\n"), []byte("\n"))
	if !bytes.HasSuffix(got, want) {
		t.Fatalf("message %s arrived altered:\n--- got (last 300 bytes)\n%q\n--- want suffix (last 300 bytes)\n%q",
			token, last(got, 300), last(want, 300))
	}
}

func last(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// A hundred messages through the proxy, plain and pipelined, several per
// session, each arriving byte for byte.
func TestRelayToPostfix(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	r := rand.New(rand.NewPCG(1, 2))
	type sent struct {
		token string
		msg   []byte
	}
	var all []sent
	for session := range 20 {
		c := harness.Dial(t, s.addr())
		c.Expect(220)
		exts := c.Ehlo("client.test")
		if !harness.HasExt(exts, "PIPELINING") {
			t.Fatalf("EHLO reply through the proxy lacks PIPELINING: %v", exts)
		}
		for i := range 5 {
			token := harness.Token(t)
			msg := body(token, r, 200+r.IntN(20000))
			if (session+i)%2 == 0 {
				c.SendMailPipelined("sender@example.com", []string{"rcpt@example.org"}, msg)
			} else {
				c.SendMail("sender@example.com", []string{"rcpt@example.org"}, msg)
			}
			all = append(all, sent{token, msg})
		}
		c.Quit()
	}
	for _, m := range all {
		delivered(t, s.pf, m.token, m.msg)
	}
	// One NEW and one CLOSE line per session.
	news := matching(d, regexp.MustCompile(`NEW \(\d+/\d+\) on=127\.0\.0\.1:\d+, src=127\.0\.0\.1:\d+`))
	if len(news) != 20 {
		t.Errorf("%d NEW lines, want 20", len(news))
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=(quit|server|client), rcv=\d+/\d+.*id=20$`), 10e9)
	if n := len(matching(d, regexp.MustCompile(`CLOSE by=`))); n != 20 {
		t.Errorf("%d CLOSE lines, want 20", n)
	}
}

// The MTA cannot be reached: the client is told so, with the configured
// text, and the session is logged as such.
func TestCannotConnect(t *testing.T) {
	s := newSetup(t)
	closed := harness.FreePort(t)
	d := s.start(t, fmt.Sprintf("fixed_server_port %d", closed), "msg_cannot_connect MTA is down, try later")
	c := harness.Dial(t, s.addr())
	reply := c.Expect(421)
	if !strings.Contains(reply, "test-proxy MTA is down, try later") {
		t.Fatalf("reply %q, want the proxy name and msg_cannot_connect", reply)
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=connect, `), 10e9)
}

// procStatus reads the Uid/Gid lines of /proc/PID/task/TID/status for
// every thread of pid.
func threadIDs(t *testing.T, pid int) (uids, gids []string) {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads for pid %d: %v", pid, err)
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				uids = append(uids, strings.Join(strings.Fields(v), " "))
			}
			if v, ok := strings.CutPrefix(line, "Gid:"); ok {
				gids = append(gids, strings.Join(strings.Fields(v), " "))
			}
		}
	}
	return uids, gids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Join(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), " ")
}

// children returns the daemon's child processes by role.
func children(t *testing.T, d *harness.Daemon) map[string][]int {
	t.Helper()
	roles := map[string][]int{}
	for _, pid := range harness.ChildPids(d.Pid()) {
		f := strings.Fields(cmdline(pid))
		if len(f) >= 3 && f[1] == "-child" {
			roles[f[2]] = append(roles[f[2]], pid)
		}
	}
	return roles
}

// matching returns the daemon's log lines that match re.
func matching(d *harness.Daemon, re *regexp.Regexp) []string {
	var out []string
	for _, l := range d.LogLines() {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}
