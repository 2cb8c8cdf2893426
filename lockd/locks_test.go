package lockd

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

func found(t testing.TB, s *server, f *ipc.Found) {
	t.Helper()
	if err := s.found(f); err != nil {
		t.Fatalf("found %+v: %v", f, err)
	}
}

func locked(t testing.TB, s *server, q *ipc.Policy) bool {
	t.Helper()
	q.Lock = true
	return ask(t, s, q).Locked
}

func TestLockOnVirus(t *testing.T) {
	s, lb := testServer(t, "lock_on virus", "lock_duration 3600", "lock_perm 0604")
	cfg := s.cfg.Load()
	found(t, s, &ipc.Found{Event: config.LockSpam, Client: cli4}) // not in lock_on
	if locked(t, s, &ipc.Policy{Client: cli4}) {
		t.Fatal("locked for spam without lock_on spam")
	}
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4, Detail: "Eicar"})
	path := filepath.Join(cfg.LockPath, "192.0.2.1")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o604 || int(st.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
		t.Errorf("lock file mode %v uid %d, want 0604, %d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
	}
	// The cause 1.4 wrote: the virus name.
	if b, _ := os.ReadFile(path); string(b) != "Eicar\n" {
		t.Errorf("lock file content %q, want %q", b, "Eicar\n")
	}
	if !strings.Contains(lb.String(), "LOCK:CREATED ("+path+"): virus, src=192.0.2.1, ident=-, detail=Eicar, until=") {
		t.Errorf("no LOCK:CREATED line:\n%s", lb)
	}
	a := ask(t, s, &ipc.Policy{Client: cli4, Lock: true})
	if !a.Locked || a.Cause != "Eicar" {
		t.Errorf("answer %+v, want locked for Eicar", a)
	}
	if locked(t, s, &ipc.Policy{Client: cli4b}) {
		t.Error("another address is locked")
	}
	// The address's lock covers its idents; an ident's lock only itself.
	if !locked(t, s, &ipc.Policy{Client: cli4, Ident: "bob"}) {
		t.Error("an ident of a locked address is not locked")
	}
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4b, Ident: "carol"})
	if _, err := os.Stat(filepath.Join(cfg.LockPath, "192.0.2.2-carol")); err != nil {
		t.Error(err)
	}
	if !locked(t, s, &ipc.Policy{Client: cli4b, Ident: "carol"}) || locked(t, s, &ipc.Policy{Client: cli4b, Ident: "dave"}) ||
		locked(t, s, &ipc.Policy{Client: cli4b}) {
		t.Error("ident locks: want carol locked, dave and the address not")
	}
	// IPv6.
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli6})
	if _, err := os.Stat(filepath.Join(cfg.LockPath, "2001_db8__1")); err != nil || !locked(t, s, &ipc.Policy{Client: cli6}) {
		t.Errorf("IPv6 lock: %v", err)
	}
}

func TestLockExpiry(t *testing.T) {
	s, lb := testServer(t, "lock_on any", "lock_duration 2")
	cfg := s.cfg.Load()
	found(t, s, &ipc.Found{Event: config.LockRegex, Client: cli4})
	found(t, s, &ipc.Found{Event: config.LockEarlytalker, Client: cli4b})
	path := filepath.Join(cfg.LockPath, "192.0.2.1")
	old := time.Now().Add(-3 * time.Second)
	os.Chtimes(path, old, old)
	if locked(t, s, &ipc.Policy{Client: cli4}) {
		t.Fatal("locked after lock_duration")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("expired lock not removed at the next connection: %v", err)
	}
	if !strings.Contains(lb.String(), "LOCK:EXPIRED src=192.0.2.1, ident=-, cause=REGEX") {
		t.Errorf("no LOCK:EXPIRED line:\n%s", lb)
	}
	// The sweep removes expired locks of clients that do not come back.
	path = filepath.Join(cfg.LockPath, "192.0.2.2")
	if b, _ := os.ReadFile(path); string(b) != "EARLYTALK\n" {
		t.Errorf("earlytalk lock content %q", b)
	}
	s.sweepLocks(cfg, time.Now())
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the sweep removed a lock that has not expired: %v", err)
	}
	s.sweepLocks(cfg, time.Now().Add(3*time.Second))
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the sweep left an expired lock: %v", err)
	}
	// lock_duration -1: forever.
	s.setConfig(t, "lock_on virus", "lock_duration -1")
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4})
	s.sweepLocks(s.cfg.Load(), time.Now().Add(100*365*24*time.Hour))
	if !locked(t, s, &ipc.Policy{Client: cli4}) {
		t.Error("lock_duration -1: not locked forever")
	}
	// lock_duration 0: locks are neither made nor looked at.
	s.setConfig(t, "lock_on virus", "lock_duration 0")
	if locked(t, s, &ipc.Policy{Client: cli4}) {
		t.Error("lock_duration 0: a lock is looked at")
	}
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli6})
	if _, err := os.Stat(filepath.Join(cfg.LockPath, "2001_db8__1")); !os.IsNotExist(err) {
		t.Error("lock_duration 0: a lock was made")
	}
}

// An administrator's file (another owner) is no lock, is never removed,
// and keeps the client from being locked.
func TestAdminFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give a file to another user")
	}
	s, lb := testServer(t, "lock_on virus", "lock_duration 1")
	cfg := s.cfg.Load()
	for _, n := range []string{"192.0.2.1", "192.0.2.2-carol"} {
		path := filepath.Join(cfg.LockPath, n)
		if err := os.WriteFile(path, []byte("do not lock: the boss\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-time.Hour)
		os.Chtimes(path, old, old)
	}
	for _, q := range []*ipc.Policy{{Client: cli4}, {Client: cli4, Ident: "x"}, {Client: cli4b, Ident: "carol"}} {
		if locked(t, s, q) {
			t.Errorf("%v %q: an administrator's file is a lock", q.Client, q.Ident)
		}
	}
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4})
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4, Ident: "x"})
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4b, Ident: "carol"})
	s.sweepLocks(cfg, time.Now().Add(time.Hour))
	ents, _ := os.ReadDir(cfg.LockPath)
	if len(ents) != 2 {
		t.Errorf("files %v, want the two administrator's files alone", ents)
	}
	for _, n := range []string{"192.0.2.1", "192.0.2.2-carol"} {
		if b, _ := os.ReadFile(filepath.Join(cfg.LockPath, n)); string(b) != "do not lock: the boss\n" {
			t.Errorf("%s changed: %q", n, b)
		}
	}
	if !strings.Contains(lb.String(), "an administrator's file") {
		t.Errorf("protection not logged:\n%s", lb)
	}
	// A lock made before the administrator's file does not count.
	if err := os.WriteFile(filepath.Join(cfg.LockPath, "192.0.2.2"), []byte("virus\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if locked(t, s, &ipc.Policy{Client: cli4b, Ident: "carol"}) {
		t.Error("an ident protected by an administrator's file is locked by its address's lock")
	}
	os.Remove(filepath.Join(cfg.LockPath, "192.0.2.2"))
	// But cli4b's own address can be locked.
	found(t, s, &ipc.Found{Event: config.LockVirus, Client: cli4b})
	if !locked(t, s, &ipc.Policy{Client: cli4b}) {
		t.Error("192.0.2.2 not locked: only 192.0.2.2-carol is protected")
	}
}
