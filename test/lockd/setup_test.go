// Package lockd drives the real daemon's locks, action script and rate
// limits against the real Postfix and clamd: lock files made for a virus
// and honoured at the next connection, administrator's files, the action
// script's environment, rate limits counted across session workers,
// generations and personal quotas through reloads and restarts, lockd
// killed under load, and damaged rate-limit files.
package lockd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// systemUser makes sure the test's system user exists and returns its ids.
// Without root it fails, rather than skips, when SMTPGATED_REQUIRE_PEERS=1.
func systemUser(t *testing.T) (uid, gid int) {
	t.Helper()
	const why = "the daemon drops to set_user, and lock files are told apart by their owner"
	if os.Geteuid() != 0 && os.Getenv(harness.EnvRequirePeers) == "1" {
		t.Fatal("needs root: " + why)
	}
	return harness.SystemUser(t, why)
}

// setup is a Postfix, the test user, and a directory for one daemon's
// files: lock/ and rate/ are made by lockd itself (for set_user), out/ is
// where the action script writes.
type setup struct {
	pf       *harness.PostfixServer
	uid, gid int
	dir      string
	port     int
	script   string
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	uid, gid := systemUser(t)
	pf := harness.Postfix(t)
	dir := harness.DaemonDir(t, "sgl-")
	s := &setup{pf: pf, uid: uid, gid: gid, dir: dir, port: harness.FreePort(t)}
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	os.Chown(out, uid, gid)
	// The action script writes its environment to a new file per run,
	// and after it ARGC, ARG1 to ARG4 and CWD: its arguments and its
	// working directory.
	s.script = filepath.Join(dir, "action.sh")
	body := fmt.Sprintf("#!/bin/sh\n{ env; printf 'ARGC=%%s\\nARG1=%%s\\nARG2=%%s\\nARG3=%%s\\nARG4=%%s\\nCWD=%%s\\n' "+
		`"$#" "$1" "$2" "$3" "$4" "$(pwd)"; } > %[1]s/env.$$.tmp && mv %[1]s/env.$$.tmp %[1]s/env.$$`+"\n", out)
	if err := os.WriteFile(s.script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *setup) lockDir() string  { return filepath.Join(s.dir, "lock") }
func (s *setup) rateDir() string  { return filepath.Join(s.dir, "rate") }
func (s *setup) spoolDir() string { return filepath.Join(s.dir, "spool") }
func (s *setup) addr() string     { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// config is a fixed-mode configuration relaying to Postfix as set_user,
// with extra lines appended (a later line wins).
func (s *setup) config(extra ...string) string {
	return fmt.Sprintf(`mode fixed
fixed_server 127.0.0.1
fixed_server_port %d
bind_address 127.0.0.1
port %d
proxy_name test-proxy
set_user %s
set_group %s
pidfile %s/smtp-gated.pid
control_socket %s/control.sock
statefile %s/state
spool_path %s/spool
lock_path %s
ratelimit_path %s
log_level debug
session_workers 4
max_per_host 200
max_connections 200
connect_queue 128
max_load 0
timeout_shutdown 10
%s
`, s.pf.Port, s.port, harness.TestUser, harness.TestUser, s.dir, s.dir, s.dir, s.dir, s.lockDir(), s.rateDir(), strings.Join(extra, "\n"))
}

func (s *setup) start(t *testing.T, extra ...string) *harness.Daemon {
	t.Helper()
	return harness.StartDaemon(t, s.config(extra...))
}

// ctl runs smtpgatectl against the daemon, as root or as cred.
func (s *setup) ctl(t *testing.T, cred *syscall.Credential, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(harness.CtlBinary(t), append([]string{"-s", filepath.Join(s.dir, "control.sock")}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// mustCtl runs smtpgatectl as root and wants exit status 0.
func (s *setup) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	code, out := s.ctl(t, nil, args...)
	if code != 0 {
		t.Fatalf("smtpgatectl %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// counter reads one counter and its quota from `smtpgatectl ratelimit
// show`.
func (s *setup) counter(t *testing.T, client, name string) (count, quota int) {
	t.Helper()
	out := s.mustCtl(t, "ratelimit", "show", client)
	m := regexp.MustCompile(`(?m)^` + name + `\s+(\d+)\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %s in:\n%s", name, out)
	}
	count, _ = strconv.Atoi(m[1])
	quota, _ = strconv.Atoi(m[2])
	return count, quota
}

// envs returns the environments the action script wrote so far.
func (s *setup) envs(t *testing.T) []map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(s.dir, "out", "env.*[0-9]"))
	var out []map[string]string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for line := range strings.Lines(string(b)) {
			k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
			env[k] = v
		}
		out = append(out, env)
	}
	return out
}

// waitEnvs waits until the action script has run n times, and a moment
// more to catch a run too many.
func (s *setup) waitEnvs(t *testing.T, n int) []map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.envs(t)) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	got := s.envs(t)
	if len(got) != n {
		t.Fatalf("the action script ran %d times, want %d", len(got), n)
	}
	return got
}

// greeting connects from localIP and reads the first reply: its code and
// text (0 when the connection ended without one).
func greeting(t *testing.T, localIP, addr string) (int, string, *harness.Client) {
	t.Helper()
	c := harness.DialFrom(t, localIP, addr)
	code, text, _ := c.Reply()
	return code, text, c
}

// sendVirus sends EICAR in one transaction from localIP and wants the
// 550; it returns the client's port and the virus name of the reply.
func sendVirus(t *testing.T, s *setup, localIP string) (port int, name string) {
	t.Helper()
	c := harness.DialFrom(t, localIP, s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))))
	r := c.Expect(550)
	m := regexp.MustCompile(`^550 5\.7\.1 test-proxy .*: (\S+)$`).FindStringSubmatch(r)
	if m == nil {
		t.Fatalf("reply to a virus: %q", r)
	}
	c.Quit()
	return c.Conn().LocalAddr().(*net.TCPAddr).Port, m[1]
}

// fileOwner returns a file's owner, mode and content.
func fileOwner(t *testing.T, path string) (uid int, mode os.FileMode, content string) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("lock file: %v", err)
	}
	b, _ := os.ReadFile(path)
	return int(st.Sys().(*syscall.Stat_t).Uid), st.Mode().Perm(), string(b)
}

// lockdPid is the pid of the daemon's lockd.
func lockdPid(t *testing.T, d *harness.Daemon) int {
	t.Helper()
	// /proc is read while processes come and go on a busy machine: a
	// child can be missed by one pass.
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, pid := range harness.ChildPids(d.Pid()) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if strings.Contains(string(b), "\x00lockd") {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no lockd process among the children of %d", d.Pid())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
