package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// Every child runs with no new privileges and an empty capability
// bounding set, on every thread; the session workers' root is spool_path;
// and no chrooted child holds a descriptor of a directory outside its
// root (from which it could walk back to the host's root). Looked at
// while a message is being spooled, so the spool file is open.
func TestConfinement(t *testing.T) {
	systemUser(t)
	s := newSetup(t)
	jail := filepath.Join(s.dir, "jail")
	os.Mkdir(jail, 0o755)
	// A scanner, so that the message is spooled (over TCP: a socket path
	// would be inside chroot_path).
	clamd := harness.Clamd(t)
	d := s.start(t, "set_user "+harness.TestUser, "set_group "+harness.TestUser, "chroot_path "+jail,
		"antivirus_type clamd", "antivirus_path "+clamd.Addr)
	spool := filepath.Join(jail, s.dir, "spool") // spool_path is inside chroot_path

	c := greeted(t, s.addr())
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	token := harness.Token(t)
	c.Send("Subject: " + token + "\r\n\r\nhalf a message\r\n")
	waitSpoolFile(t, spool)

	roles := children(t, d)
	if len(roles["session"]) != 2 || len(roles["lookup"]) != 1 || len(roles["scanner"]) != 1 || len(roles["lockd"]) != 1 {
		t.Fatalf("children by role: %v", roles)
	}
	spoolFiles := 0
	for role, pids := range roles {
		for _, pid := range pids {
			checkRestricted(t, role, pid)
			root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
			if err != nil {
				t.Fatal(err)
			}
			switch role {
			case "session":
				if root != spool {
					t.Errorf("session pid %d has root %q, want spool_path %q", pid, root, spool)
				}
			case "lookup":
				if root != jail {
					t.Errorf("lookup pid %d has root %q, want chroot_path %q", pid, root, jail)
				}
			}
			if root == "/" {
				continue
			}
			fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, fd := range fds {
				p := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
				target, err := os.Readlink(p)
				if err != nil {
					continue // closed meanwhile
				}
				if strings.HasPrefix(target, spool+"/") {
					spoolFiles++
				}
				fi, err := os.Stat(p)
				if err != nil || !fi.IsDir() {
					continue
				}
				if target != root && !strings.HasPrefix(target, root+"/") {
					t.Errorf("%s pid %d (root %s): fd %s is the directory %s, outside its root", role, pid, root, fd.Name(), target)
				}
			}
		}
	}
	if spoolFiles == 0 {
		t.Errorf("no session worker holds a spool file under %s: the message was not being spooled", spool)
	}
	c.Send(".\r\n")
	c.Expect(250)
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
}

// checkRestricted checks NoNewPrivs and CapBnd on every thread of pid.
func checkRestricted(t *testing.T, role string, pid int) {
	t.Helper()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if len(tasks) == 0 {
		t.Fatalf("%s pid %d: no threads", role, pid)
	}
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		nnp := regexp.MustCompile(`(?m)^NoNewPrivs:\s*(\S+)`).FindSubmatch(b)
		bnd := regexp.MustCompile(`(?m)^CapBnd:\s*(\S+)`).FindSubmatch(b)
		if nnp == nil || string(nnp[1]) != "1" {
			t.Errorf("%s pid %d (%s): NoNewPrivs %q, want 1", role, pid, f, nnp)
		}
		if bnd == nil || strings.Trim(string(bnd[1]), "0") != "" {
			t.Errorf("%s pid %d (%s): CapBnd %q, want an empty set", role, pid, f, bnd)
		}
	}
}

// waitSpoolFile waits for a spool file to appear in dir (a regular file;
// the worker's writes follow DATA's 354 in its own time).
func waitSpoolFile(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no spool file in %s", dir)
}
