package ops

import (
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

	"golang.org/x/sys/unix"

	"smtp-gated/test/harness"
)

// wrapper writes a script that sets env (a shell's $$ is the pid the
// daemon keeps after exec: systemd sets WATCHDOG_PID and LISTEN_PID to
// the service's pid the same way) and executes the daemon.
func wrapper(t *testing.T, env string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sgw-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "smtp-gated")
	script := fmt.Sprintf("#!/bin/sh\n%s\nexec %s \"$@\"\n", env, harness.DaemonBinary(t))
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// The daemon plays its part of Type=notify-reload with a watchdog:
// READY=1, WATCHDOG=1 every WATCHDOG_USEC/2 from master's pid,
// RELOADING=1 with MONOTONIC_USEC then READY=1 on SIGHUP, STOPPING=1 on
// SIGTERM.
func TestSystemdNotify(t *testing.T) {
	s := newSetup(t)
	const interval = 400 * time.Millisecond
	bin := wrapper(t, fmt.Sprintf("export WATCHDOG_PID=$$ WATCHDOG_USEC=%d", interval.Microseconds()))
	d := harness.StartDaemon(t, s.config(), harness.WithBinary(bin))
	ready := d.WaitNotify(t, "READY=1", time.Second)
	if ready.Pid != d.Pid() {
		t.Errorf("READY=1 from pid %d, want master %d", ready.Pid, d.Pid())
	}

	// Five pings after READY, each from master, none later than the
	// interval after the one before (systemd would kill the service).
	// (A ping comes every 200 ms: the mark taken right after one is
	// before the next.)
	m := d.Mark()
	var pings []harness.Notification
	for len(pings) < 5 {
		pings = append(pings, d.WaitNotifyAfter(t, m, "WATCHDOG=1", 2*interval))
		m = d.Mark()
	}
	for i, p := range pings {
		if p.Pid != d.Pid() {
			t.Errorf("WATCHDOG=1 from pid %d, want master %d", p.Pid, d.Pid())
		}
		if i == 0 {
			continue
		}
		gap := p.Time.Sub(pings[i-1].Time)
		if gap > interval || gap < interval/4 {
			t.Errorf("WATCHDOG=1 %v after the one before, want about %v (and under %v)", gap, interval/2, interval)
		}
	}

	// Reload: RELOADING=1 with a monotonic time of now, then READY=1.
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	before := ts.Nano() / 1000
	n := d.Reload(t)
	usec, err := strconv.ParseInt(n.Value("MONOTONIC_USEC"), 10, 64)
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	if err != nil || usec < before || usec > ts.Nano()/1000 {
		t.Errorf("RELOADING=1 with MONOTONIC_USEC %q, want a time between %d and %d", n.Value("MONOTONIC_USEC"), before, ts.Nano()/1000)
	}
	if n.Pid != d.Pid() {
		t.Errorf("RELOADING=1 from pid %d", n.Pid)
	}

	m = d.Mark()
	if code := d.Stop(t); code != 0 {
		t.Errorf("exit status %d after TERM", code)
	}
	d.WaitNotifyAfter(t, m, "STOPPING=1", time.Second)

	// No children ever notified: NotifyAccess=main would log each.
	for _, n := range d.Notifications() {
		if n.Pid != d.Pid() {
			t.Errorf("notification %q from pid %d, not master %d", n.Text, n.Pid, d.Pid())
		}
	}
}

// A watchdog meant for another process (WATCHDOG_PID is not the
// daemon's) is not the daemon's to ping.
func TestSystemdWatchdogOtherPid(t *testing.T) {
	s := newSetup(t)
	bin := wrapper(t, "export WATCHDOG_PID=1 WATCHDOG_USEC=100000")
	d := harness.StartDaemon(t, s.config(), harness.WithBinary(bin))
	// Ten intervals: nothing is sent, so there is no event to wait for.
	time.Sleep(time.Second)
	for _, n := range d.Notifications() {
		if n.Has("WATCHDOG=1") {
			t.Fatalf("WATCHDOG=1 sent though WATCHDOG_PID=1")
		}
	}
}

// Socket activation: the daemon serves on the listener passed as
// descriptor 3 (LISTEN_FDS=1, LISTEN_PID its pid), does not bind its
// configured port, and no child inherits the listener.
func TestSocketActivation(t *testing.T) {
	s := newSetup(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	sockLink := fmt.Sprintf("socket:[%d]", st.Ino)
	bin := wrapper(t, "export LISTEN_PID=$$ LISTEN_FDS=1")
	d := harness.StartDaemon(t, s.config(), harness.WithBinary(bin), harness.WithExtraFiles(f))
	f.Close() // the daemon has its own
	d.WaitLog(t, regexp.MustCompile(`socket activation: listening on `+regexp.QuoteMeta(ln.Addr().String())), time.Second)

	holders := func(pid int) bool {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range ents {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); l == sockLink {
				return true
			}
		}
		return false
	}
	if !holders(d.Pid()) {
		t.Errorf("master does not hold the passed listener %s", sockLink)
	}
	for _, pid := range allPids(t, d)[1:] {
		if holders(pid) {
			t.Errorf("child %d (%s) inherited the listener", pid, cmdline(pid))
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if strings.Contains(string(env), "LISTEN_") {
			t.Errorf("child %d has LISTEN_* in its environment", pid)
		}
	}

	// Mail through the passed socket; nothing on the configured port.
	c := greeted(t, ln.Addr().String())
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
	if conn, err := net.DialTimeout("tcp", s.addr(), time.Second); err == nil {
		conn.Close()
		t.Errorf("the daemon listens on its configured %s too", s.addr())
	}
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// systemd-analyze verify accepts the unit files, with the binary and the
// man pages they name in place.
func TestSystemdUnitVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv(harness.EnvRequirePeers) == "1" {
			t.Fatal("systemd-analyze not installed")
		}
		t.Skip("systemd-analyze not installed")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, sec := range []string{"5", "8"} {
		os.MkdirAll(filepath.Join(dir, "man", "man"+sec), 0o755)
		ms, _ := filepath.Glob(filepath.Join(root, "man", "*."+sec))
		for _, m := range ms {
			b, _ := os.ReadFile(m)
			os.WriteFile(filepath.Join(dir, "man", "man"+sec, filepath.Base(m)), b, 0o644)
		}
	}
	unit, err := os.ReadFile(filepath.Join(root, "etc", "smtp-gated.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/local/sbin/smtp-gated -f /etc/smtp-gated.conf\n") {
		t.Fatalf("unit has no ExecStart=/usr/local/sbin/smtp-gated -f /etc/smtp-gated.conf")
	}
	bin := harness.DaemonBinary(t)
	text := strings.ReplaceAll(string(unit), "/usr/local/sbin/smtp-gated", bin)
	sock, _ := os.ReadFile(filepath.Join(root, "etc", "smtp-gated.socket"))
	os.WriteFile(filepath.Join(dir, "smtp-gated.service"), []byte(text), 0o644)
	os.WriteFile(filepath.Join(dir, "smtp-gated.socket"), sock, 0o644)
	// The drop-in the unit suggests for systemd before 253.
	old := strings.Replace(text, "\nType=notify-reload\n", "\nType=notify\nExecReload=/bin/kill -HUP $MAINPID\n", 1)
	os.WriteFile(filepath.Join(dir, "smtp-gated-old.service"), []byte(old), 0o644)

	out, _ := exec.Command(sa, "--version").Output()
	ver, _ := strconv.Atoi(strings.Fields(string(out) + " 0 0")[1])
	for _, u := range []string{"smtp-gated.service", "smtp-gated.socket", "smtp-gated-old.service"} {
		cmd := exec.Command(sa, "verify", "./"+u)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dir, "man"), "SYSTEMD_LOG_COLOR=0")
		b, err := cmd.CombinedOutput()
		var unexpected []string
		for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
			// systemd before 253 does not know Type=notify-reload yet.
			if line == "" || (ver < 253 && strings.HasSuffix(line, "Failed to parse service type, ignoring: notify-reload")) {
				continue
			}
			unexpected = append(unexpected, line)
		}
		if err != nil || len(unexpected) > 0 {
			t.Errorf("systemd-analyze verify %s (systemd %d): %v\n%s", u, ver, err, strings.Join(unexpected, "\n"))
		}
	}
}

// The rc.d scripts parse.
func TestRcScripts(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"etc/rc.d/openbsd/smtp_gated", "etc/rc.d/freebsd/smtp_gated"} {
		path := filepath.Join(root, f)
		if b, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", f, err, b)
		}
		b, _ := os.ReadFile(path)
		for _, want := range map[string][]string{
			"etc/rc.d/openbsd/smtp_gated": {". /etc/rc.d/rc.subr", `daemon_flags="/etc/smtp-gated.conf"`, "rc_cmd $1"},
			"etc/rc.d/freebsd/smtp_gated": {". /etc/rc.subr", `rcvar="smtp_gated_enable"`, `extra_commands="reload status"`, `run_rc_command "$1"`},
		}[f] {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s has no %q", f, want)
			}
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s is not executable (%v)", f, err)
		}
	}
}
