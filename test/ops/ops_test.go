// Package ops tests what an administrator touches: the status file,
// smtpgatectl, systemd's notifications, watchdog and socket activation,
// resource limits and priority, the service files and the install.
package ops

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// setup is a Postfix and a directory for one daemon's files.
type setup struct {
	pf   *harness.PostfixServer
	dir  string
	port int
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	pf := harness.Postfix(t)
	dir := harness.DaemonDir(t, "sgo-")
	return &setup{pf: pf, dir: dir, port: harness.FreePort(t)}
}

// config is a fixed-mode configuration relaying to Postfix with two
// session workers, with extra lines appended (a later line wins).
func (s *setup) config(extra ...string) string {
	return fmt.Sprintf(`mode fixed
fixed_server 127.0.0.1
fixed_server_port %d
bind_address 127.0.0.1
port %d
proxy_name test-proxy
pidfile %[3]s/smtp-gated.pid
control_socket %[3]s/control.sock
statefile %[3]s/state
spool_path %[3]s/spool
lock_path %[3]s/lock
ratelimit_path %[3]s/ratelimit
log_level debug
session_workers 2
timeout_shutdown 10
max_per_host 64
max_load 0
%s
`, s.pf.Port, s.port, s.dir, strings.Join(extra, "\n"))
}

func (s *setup) addr() string  { return fmt.Sprintf("127.0.0.1:%d", s.port) }
func (s *setup) sock() string  { return filepath.Join(s.dir, "control.sock") }
func (s *setup) state() string { return filepath.Join(s.dir, "state") }

func (s *setup) start(t *testing.T, extra ...string) *harness.Daemon {
	t.Helper()
	return harness.StartDaemon(t, s.config(extra...))
}

// greeted opens a session through the proxy up to EHLO.
func greeted(t *testing.T, addr string) *harness.Client {
	t.Helper()
	c := harness.Dial(t, addr)
	c.Expect(220)
	c.Ehlo("client.test")
	return c
}

// result is what a command printed and its exit status.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// run runs bin with args, as cred when not nil.
func run(t *testing.T, cred *syscall.Credential, bin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("%s %v: %v", bin, args, err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("%s %v: still running after 30 s", bin, args)
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
}

// ctl runs smtpgatectl -s SOCKET ARGS as root (cred nil) or as cred.
func (s *setup) ctl(t *testing.T, cred *syscall.Credential, args ...string) result {
	t.Helper()
	return run(t, cred, harness.CtlBinary(t), append([]string{"-s", s.sock()}, args...)...)
}

// children returns the pids of the daemon's children by role.
func children(t *testing.T, d *harness.Daemon) map[string][]int {
	t.Helper()
	roles := map[string][]int{}
	for _, pid := range harness.ChildPids(d.Pid()) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 3 && args[1] == "-child" {
			roles[args[2]] = append(roles[args[2]], pid)
		}
	}
	return roles
}

func allPids(t *testing.T, d *harness.Daemon) []int {
	t.Helper()
	pids := []int{d.Pid()}
	for _, p := range children(t, d) {
		pids = append(pids, p...)
	}
	if len(pids) != 6 {
		t.Fatalf("master and %d children, want 5 children (2 session, lookup, scanner, lockd)", len(pids)-1)
	}
	return pids
}

// nobody is the credential of an unprivileged caller.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func credOf(v any) *syscall.Credential {
	c, _ := v.(*syscall.Credential)
	return c
}
