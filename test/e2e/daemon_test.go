package e2e

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
	"sync"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// systemUser makes sure the test's system user exists and returns its ids.
func systemUser(t *testing.T) (uid, gid int) {
	t.Helper()
	return harness.SystemUser(t, "starts the daemon as root with set_user")
}

// Only master keeps root; every thread of every child runs as set_user,
// and the session workers, lookup and lockd see only their chroot.
func TestPrivileges(t *testing.T) {
	uid, gid := systemUser(t)
	s := newSetup(t)
	jail := filepath.Join(s.dir, "jail")
	os.Mkdir(jail, 0o755)
	d := s.start(t, "set_user "+harness.TestUser, "set_group "+harness.TestUser, "chroot_path "+jail)

	uids, _ := threadIDs(t, d.Pid())
	for _, u := range uids {
		if u != "0 0 0 0" {
			t.Errorf("master thread has Uid %q, want root", u)
		}
	}
	roles := children(t, d)
	if len(roles["session"]) != 2 || len(roles["lookup"]) != 1 || len(roles["scanner"]) != 1 || len(roles["lockd"]) != 1 {
		t.Fatalf("children by role: %v; want 2 session, 1 lookup, 1 scanner, 1 lockd", roles)
	}
	wantU := fmt.Sprintf("%d %d %d %d", uid, uid, uid, uid)
	wantG := fmt.Sprintf("%d %d %d %d", gid, gid, gid, gid)
	for role, pids := range roles {
		for _, pid := range pids {
			uids, gids := threadIDs(t, pid)
			for i := range uids {
				if uids[i] != wantU || gids[i] != wantG {
					t.Errorf("%s pid %d thread %d: Uid %q Gid %q, want %q %q", role, pid, i, uids[i], gids[i], wantU, wantG)
				}
			}
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if m := regexp.MustCompile(`(?m)^Groups:\s*(.*)$`).FindStringSubmatch(string(b)); m == nil || strings.TrimSpace(m[1]) != strconv.Itoa(gid) {
				t.Errorf("%s pid %d: supplementary groups %q, want only %d", role, pid, m, gid)
			}
			root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
			if err != nil {
				t.Fatal(err)
			}
			if (role == "lookup" || role == "lockd") && root != jail {
				t.Errorf("%s pid %d has root %q, want the chroot %q", role, pid, root, jail)
			}
			if spool := filepath.Join(jail, s.dir, "spool"); role == "session" && root != spool {
				t.Errorf("%s pid %d has root %q, want spool_path %q", role, pid, root, spool)
			}
		}
	}
	// And the chrooted, unprivileged workers still serve.
	c := harness.Dial(t, s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
}

// Without chroot_path, session workers are still chrooted, into
// spool_path, and lookup into an empty directory.
func TestSessionChrootWithoutChrootPath(t *testing.T) {
	systemUser(t)
	s := newSetup(t)
	d := s.start(t, "set_user "+harness.TestUser)
	roles := children(t, d)
	for _, pid := range roles["session"] {
		root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(s.dir, "spool"); root != want {
			t.Errorf("session pid %d has root %q, want spool_path %q", pid, root, want)
		}
	}
	for _, pid := range roles["lookup"] {
		root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
		if err != nil {
			t.Fatal(err)
		}
		entries, err := os.ReadDir(root)
		if root == "/" || err != nil || len(entries) != 0 {
			t.Errorf("lookup pid %d has root %q (%d entries, %v), want an empty directory", pid, root, len(entries), err)
		}
	}
}

// greeted opens a session through the proxy up to EHLO.
func greeted(t *testing.T, addr string) *harness.Client {
	t.Helper()
	c := harness.Dial(t, addr)
	c.Expect(220)
	c.Ehlo("client.test")
	return c
}

// sessionWorker finds which worker serves the session with log id.
func workerOf(t *testing.T, d *harness.Daemon, id int) int {
	t.Helper()
	for _, pid := range children(t, d)["session"] {
		// The worker logs "connected to" with the session id.
		re := regexp.MustCompile(fmt.Sprintf(`\[%d\]: debug: session \d+: \[%d\] connected to`, pid, id))
		if len(matching(d, re)) > 0 {
			return pid
		}
	}
	return 0
}

// A session worker killed with -9 in the middle of sessions: master logs
// it, restarts it, the sessions of the other worker finish, and new
// connections are served.
func TestWorkerKilled(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	var open []*harness.Client
	for range 6 {
		open = append(open, greeted(t, s.addr()))
	}
	for id := 1; id <= 6; id++ {
		d.WaitLog(t, regexp.MustCompile(fmt.Sprintf(`\[%d\] connected to`, id)), 10*time.Second)
	}
	victim := workerOf(t, d, 1)
	if victim == 0 {
		t.Fatal("cannot tell which worker serves session 1")
	}
	var survivors []*harness.Client
	for i, c := range open {
		if workerOf(t, d, i+1) != victim {
			survivors = append(survivors, c)
		}
	}
	if len(survivors) == 0 {
		t.Fatal("all sessions on one worker: master did not balance them")
	}
	mark := d.Mark()
	syscall.Kill(victim, syscall.SIGKILL)
	d.WaitLogAfter(t, mark, regexp.MustCompile(fmt.Sprintf(`session \d \(pid %d\) exited: killed by signal killed`, victim)), 10*time.Second)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=crash, .*id=1$`), 10*time.Second)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`session \d restarted \(pid \d+\)`), 10*time.Second)

	for _, c := range survivors {
		token := harness.Token(t)
		c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
		c.Quit()
		s.pf.WaitDelivered(t, token, 30*time.Second)
	}
	// New connections, on both workers (the restarted one included).
	for range 4 {
		c := greeted(t, s.addr())
		token := harness.Token(t)
		c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
		c.Quit()
		s.pf.WaitDelivered(t, token, 30*time.Second)
	}
	if got := len(children(t, d)["session"]); got != 2 {
		t.Fatalf("%d session workers after the restart, want 2", got)
	}
}

// Master killed with -9: every child is gone within 2 s (they see the end
// of their link to master).
func TestMasterKilled(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	c := greeted(t, s.addr()) // a session in flight too
	defer c.Close()
	var pids []int
	for _, p := range children(t, d) {
		pids = append(pids, p...)
	}
	if len(pids) != 5 {
		t.Fatalf("%d children, want 5", len(pids))
	}
	syscall.Kill(d.Pid(), syscall.SIGKILL)
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("child %d (%s) still alive 2 s after master was killed", pid, cmdline(pid))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// HUP during a session: the session completes, a changed option applies
// to new sessions; a broken file is refused and the old configuration
// stays.
func TestReload(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "max_per_host 3")
	inflight := greeted(t, s.addr())
	second := greeted(t, s.addr())
	second.Quit()

	if err := os.WriteFile(d.ConfigFile(), []byte(s.config("max_per_host 1", "msg_max_per_host one at a time please")), 0o644); err != nil {
		t.Fatal(err)
	}
	mark := d.Mark()
	d.Signal(syscall.SIGHUP)
	n := d.WaitNotifyAfter(t, mark, "RELOADING=1", 10*time.Second)
	if n.Value("MONOTONIC_USEC") == "" {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %q", n.Text)
	}
	d.WaitNotifyAfter(t, mark, "READY=1", 10*time.Second)

	// The new limit: the in-flight session is the one allowed.
	c := harness.Dial(t, s.addr())
	if r := c.Expect(554); !strings.Contains(r, "one at a time please") {
		t.Fatalf("over the reloaded max_per_host: %q, want the new msg_max_per_host", r)
	}
	token := harness.Token(t)
	inflight.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	inflight.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)

	// A broken file is refused, logged, and the running configuration stays.
	os.WriteFile(d.ConfigFile(), []byte(s.config("max_per_host lots")), 0o644)
	mark = d.Mark()
	d.Signal(syscall.SIGHUP)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`reload refused, keeping the running configuration: .*smtp-gated.conf:\d+: max_per_host: `), 10*time.Second)
	a := greeted(t, s.addr())
	b := harness.Dial(t, s.addr())
	if r := b.Expect(554); !strings.Contains(r, "one at a time please") {
		t.Fatalf("after a refused reload: %q, want the running limit of 1", r)
	}
	a.Quit()

	// smtp-gated -r finds the daemon through its pidfile.
	os.WriteFile(d.ConfigFile(), []byte(s.config("max_per_host 5")), 0o644)
	mark = d.Mark()
	out, err := exec.Command(harness.DaemonBinary(t), "-r", d.ConfigFile()).CombinedOutput()
	if err != nil {
		t.Fatalf("smtp-gated -r: %v %s", err, out)
	}
	d.WaitLogAfter(t, mark, regexp.MustCompile(`configuration reloaded`), 10*time.Second)
}

// TERM with a session open: the session completes, new connections are
// refused, and the daemon exits 0.
func TestTerm(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	c := greeted(t, s.addr())
	mark := d.Mark()
	d.Signal(syscall.SIGTERM)
	d.WaitNotifyAfter(t, mark, "STOPPING=1", 10*time.Second)
	d.WaitLogAfter(t, mark, regexp.MustCompile(`waiting up to 30s for 1 sessions`), 10*time.Second)
	if conn, err := net.DialTimeout("tcp", s.addr(), 2*time.Second); err == nil {
		conn.Close()
		t.Fatal("a new connection was accepted while stopping")
	}
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
	if code := d.WaitExit(t, 15*time.Second); code != 0 {
		t.Fatalf("exit status %d after TERM, want 0", code)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "smtp-gated.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile left behind: %v", err)
	}
}

// 50 concurrent connections from one source with max_per_host 8: exactly
// 8 reach the MTA, the others get the 554.
func TestMaxPerHost(t *testing.T) {
	s := newSetup(t)
	// A backlog larger than the burst: this test is about max_per_host, not
	// about connect_queue dropping handshakes on a loaded machine.
	d := s.start(t, "max_per_host 8", "max_connections 100", "connect_queue 128")
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	release := make(chan struct{})
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialTimeout("tcp", s.addr(), 10*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			buf := make([]byte, 512)
			n, err := conn.Read(buf)
			code := 0
			if err == nil && n >= 3 {
				code, _ = strconv.Atoi(string(buf[:3]))
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
			if code == 220 {
				<-release // hold the slot until every connection has its answer
			}
		}()
	}
	// Wait for 50 answers, then let the served ones go.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		total := 0
		for _, n := range codes {
			total += n
		}
		mu.Unlock()
		if total == 50 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	if codes[220] != 8 || codes[554] != 42 {
		t.Fatalf("replies by code: %v; want 8 × 220 and 42 × 554", codes)
	}
	if n := len(matching(d, regexp.MustCompile(`CLOSE by=maxhost, `))); n != 42 {
		t.Errorf("%d CLOSE by=maxhost lines, want 42", n)
	}
}

// smtpgatectl against the running daemon, and its refusal of privileged
// commands to other users.
func TestControl(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	ctl := harness.CtlBinary(t)
	sock := filepath.Join(s.dir, "control.sock")
	run := func(cred *syscall.Credential, args ...string) (int, string) {
		cmd := exec.Command(ctl, append([]string{"-s", sock}, args...)...)
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
	if code, out := run(nil, "status"); code != 0 || !strings.Contains(out, "Uptime:") || !strings.Contains(out, "session 1") {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	if code, out := run(nil, "frobnicate"); code != 2 || !strings.Contains(out, "unknown command") {
		t.Fatalf("unknown command: exit %d %q, want 2", code, out)
	}
	if os.Geteuid() == 0 {
		nobody := &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}
		if code, out := run(nobody, "status"); code != 0 {
			t.Fatalf("status as nobody: exit %d %q, want 0", code, out)
		}
		if code, out := run(nobody, "stop"); code != 4 || !strings.Contains(out, "permission denied") {
			t.Fatalf("stop as nobody: exit %d %q, want 4 and permission denied", code, out)
		}
	}
	mark := d.Mark()
	if code, out := run(nil, "reload"); code != 0 || !strings.Contains(out, "reloaded") {
		t.Fatalf("reload: exit %d %q", code, out)
	}
	d.WaitNotifyAfter(t, mark, "RELOADING=1", 10*time.Second)
	// A second daemon on the same control socket refuses to start.
	other := harness.StartDaemon(t, s.config(fmt.Sprintf("port %d", harness.FreePort(t)), "pidfile "+s.dir+"/other.pid"), harness.WithoutReady())
	if code := other.WaitExit(t, 10*time.Second); code == 0 || !strings.Contains(other.Log(), "another smtp-gated answers on it") {
		t.Fatalf("second daemon on the same control socket: exit %d\n%s", code, other.Log())
	}
	if code, out := run(nil, "stop"); code != 0 {
		t.Fatalf("stop: exit %d %q", code, out)
	}
	if code := d.WaitExit(t, 15*time.Second); code != 0 {
		t.Fatalf("exit status %d after smtpgatectl stop, want 0", code)
	}
}
