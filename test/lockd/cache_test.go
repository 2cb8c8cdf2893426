package lockd

import (
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// A session worker keeps lockd's "not locked" answers while lockd's
// generation stays the same (session/lockcache.go, lockd/gen.go). One
// worker here, so that every session after the first finds the answer
// kept: a lock made through lockd (smtpgatectl, an event in a session)
// refuses the very next session; an administrator's lock file refuses the
// sessions after lockd read its inotify event, and never more than a
// second after it was made; and a lockd that stops writing its heartbeat
// stops the worker using what it kept.
func TestLockCacheHonoured(t *testing.T) {
	clamd := harness.Clamd(t)
	s := newSetup(t)
	d := s.start(t, "session_workers 1", "lock_on virus", "lock_duration 3600",
		"antivirus_type clamd", "antivirus_path "+clamd.Socket, "msg_temp_unavail try later")
	const ip = "127.0.0.9"
	served := func(what string) {
		t.Helper()
		code, text, c := greeting(t, ip, s.addr())
		if code != 220 {
			t.Fatalf("%s: %d %q, want 220", what, code, text)
		}
		c.Quit()
	}
	refused := func(what string) {
		t.Helper()
		if code, text, _ := greeting(t, ip, s.addr()); code != 554 {
			t.Fatalf("%s: %d %q, want 554", what, code, text)
		}
	}
	// The page comes over the link from lockd, which may be made after
	// the worker said it is ready: before it, nothing is kept.
	d.WaitLog(t, regexp.MustCompile(`generation page from lockd.* mapped`), 10*time.Second)
	served("first session") // lockd asked; the answer is kept

	// lockd stopped: the answer kept lets the client in without lockd,
	// until the heartbeat on the page is a second old; then the worker
	// asks lockd again, waits its bound, and refuses for now.
	pid := lockdPid(t, d)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	defer syscall.Kill(pid, syscall.SIGCONT)
	served("lockd stopped, the answer kept")
	if took := time.Since(stopped); took > 900*time.Millisecond {
		t.Logf("the session with lockd stopped took %v: the heartbeat may have been too old already", took)
	}
	time.Sleep(time.Until(stopped.Add(1500 * time.Millisecond)))
	if code, text, _ := greeting(t, ip, s.addr()); code != 421 {
		t.Fatalf("lockd stopped for 1.5 s: %d %q, want 421 (nothing kept is used)", code, text)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	served("lockd continued")
	served("answer kept again")

	// smtpgatectl lock: lockd changes the generation before it answers.
	s.mustCtl(t, "lock", ip, "1h", "abuse desk")
	refused("next session after smtpgatectl lock")
	s.mustCtl(t, "unlock", ip)
	served("after unlock")
	served("answer kept again")

	// A virus in one session: the next session is refused.
	sendVirus(t, s, ip)
	refused("next session after the virus")
	s.mustCtl(t, "unlock", ip)
	served("after unlock")
	served("answer kept again")

	// An administrator's lock file (set_user's, so a lock): the next
	// sessions are refused once lockd read the inotify event, within a
	// second at the latest.
	path := filepath.Join(s.lockDir(), ip)
	if err := os.WriteFile(path+".tmp", []byte("by hand\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path+".tmp", s.uid, s.gid); err != nil {
		t.Fatal(err)
	}
	made := time.Now()
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	passed := 0
	for {
		code, text, c := greeting(t, ip, s.addr())
		if code == 554 {
			break
		}
		if code != 220 || time.Since(made) > time.Second {
			t.Fatalf("%v after the administrator's lock file: %d %q, want 554", time.Since(made), code, text)
		}
		c.Quit()
		passed++
	}
	t.Logf("administrator's lock file: %d sessions let in before the refusals, first refusal after %v", passed, time.Since(made))
	refused("after the administrator's lock file")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	served("after the administrator removed the file")
}
