package lockd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// testGeneration is a generation page for s, closed with the test.
func testGeneration(t *testing.T, s *server) *generation {
	t.Helper()
	g, err := newGeneration()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(g.fd) })
	s.gen = g
	return g
}

// The page says 0 (keep nothing) until answers may be kept, then a value
// it never had at every change; a bump while nothing may be kept leaves
// it at 0.
func TestGenerationValues(t *testing.T) {
	s, _ := testServer(t)
	g := testGeneration(t, s)
	seen := map[uint64]bool{}
	step := func(what string, f func(), zero bool) {
		t.Helper()
		f()
		v := g.value()
		switch {
		case zero && v != 0:
			t.Errorf("after %s: %d, want 0", what, v)
		case !zero && (v == 0 || seen[v]):
			t.Errorf("after %s: %d, want a value never seen (%v)", what, v, seen)
		}
		seen[v] = true
	}
	step("start", func() {}, true)
	step("bump while off", g.bump, true)
	step("enable", g.enable, false)
	step("bump", g.bump, false)
	step("bump again", g.bump, false)
	step("disable", g.disable, true)
	step("enable again", g.enable, false)
}

// Nobody but lockd's own mapping can change the page: no writable
// mapping, no write(2), and its size is fixed (a worker's mapping never
// loses its page).
func TestGenerationSealed(t *testing.T) {
	s, _ := testServer(t)
	g := testGeneration(t, s)
	if m, err := unix.Mmap(g.fd, 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		unix.Munmap(m)
		t.Error("a writable shared mapping of the page was made")
	}
	if _, err := unix.Pwrite(g.fd, []byte{1}, 0); err == nil {
		t.Error("write(2) to the page worked")
	}
	if err := unix.Ftruncate(g.fd, 0); err == nil {
		t.Error("the page was shrunk")
	}
	m, err := unix.Mmap(g.fd, 0, 8, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("read-only mapping: %v", err)
	}
	defer unix.Munmap(m)
	if err := unix.Mprotect(m, unix.PROT_READ|unix.PROT_WRITE); err == nil {
		t.Error("a read-only mapping of the page was made writable")
	}
}

// waitChange waits, bounded, for the page to leave value from.
func waitChange(t *testing.T, g *generation, from uint64, what string) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for g.value() == from {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the generation stayed %d", what, from)
		}
		time.Sleep(time.Millisecond)
	}
	return g.value()
}

// Whatever an administrator does in lock_path changes the generation;
// lock_path going away stops the workers keeping anything until it is
// watched again.
func TestWatchLockPath(t *testing.T) {
	s, _ := testServer(t, "lock_duration 3600")
	g := testGeneration(t, s)
	w := newLockWatch(g, s.log)
	if w == nil {
		t.Fatal("no inotify")
	}
	defer w.f.Close()
	cfg := s.cfg.Load()
	w.watch(cfg)
	v := g.value()
	if v == 0 {
		t.Fatal("lock_path watched, but the page says 0")
	}
	path := filepath.Join(cfg.LockPath, "192.0.2.1")
	steps := []struct {
		what string
		do   func() error
	}{
		{"a file made", func() error { return os.WriteFile(path, []byte("manual\n"), 0o644) }},
		{"touched", func() error { now := time.Now(); return os.Chtimes(path, now, now) }},
		{"renamed", func() error { return os.Rename(path, path+"x") }},
		{"removed", func() error { return os.Remove(path + "x") }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatal(err)
		}
		v = waitChange(t, g, v, st.what)
		if v == 0 {
			t.Fatalf("%s: the page says 0", st.what)
		}
	}
	// The same configuration again changes nothing.
	w.watch(cfg)
	if g.value() != v {
		t.Errorf("watch of the same lock_path changed the generation")
	}
	if err := os.Remove(cfg.LockPath); err != nil {
		t.Fatal(err)
	}
	if v = waitChange(t, g, v, "lock_path removed"); v != 0 {
		t.Fatalf("lock_path removed: the page says %d, want 0", v)
	}
	w.watch(cfg) // the sweeper's retry: still missing
	if g.value() != 0 {
		t.Fatal("a missing lock_path is watched")
	}
	if err := os.Mkdir(cfg.LockPath, 0o755); err != nil {
		t.Fatal(err)
	}
	w.watch(cfg)
	if g.value() == 0 {
		t.Fatal("lock_path back, but not watched")
	}
	// Locking off: nothing to watch, nothing kept.
	off, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nlock_duration 0\nlock_path "+cfg.LockPath+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	w.watch(off)
	if g.value() != 0 {
		t.Error("locking off, but the page does not say 0")
	}
}

// An event that locks changes the generation before found returns: the
// session that reported it refuses its client with the lock in place,
// and no worker finds it unlocked in what it kept.
func TestFoundBumps(t *testing.T) {
	s, _ := testServer(t, "lock_on virus", "lock_duration 3600")
	g := testGeneration(t, s)
	g.enable()
	v := g.value()
	if err := s.found(&ipc.Found{Event: config.LockVirus, Client: cli4, Detail: "EICAR"}); err != nil {
		t.Fatal(err)
	}
	if g.value() == v || g.value() == 0 {
		t.Errorf("generation %d after a lock, was %d", g.value(), v)
	}
	if a := ask(t, s, &ipc.Policy{Client: cli4, Lock: true}); !a.Locked {
		t.Errorf("not locked after the virus: %+v", a)
	}
}

// Events lockd has not read yet change the generation at the next
// heartbeat, and the heartbeat is the clock the workers read.
func TestHeartbeatSeesPending(t *testing.T) {
	s, _ := testServer(t, "lock_duration 3600")
	g := testGeneration(t, s)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	w := &lockWatch{gen: g, log: s.log, fd: fd, wd: -1} // nobody reads the events
	cfg := s.cfg.Load()
	w.watch(cfg)
	v := g.value()
	w.pending()
	if g.value() != v {
		t.Fatal("the generation changed with no event waiting")
	}
	if err := os.WriteFile(filepath.Join(cfg.LockPath, "192.0.2.1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w.pending()
	if g.value() == v || g.value() == 0 {
		t.Errorf("generation %d with an event waiting, was %d", g.value(), v)
	}
	before := monoNow()
	g.heartbeat()
	if b := *g.beat; b < before || b > monoNow() {
		t.Errorf("heartbeat %d, want between %d and now", b, before)
	}
}

// smtpgatectl lock changes the generation before its answer goes.
func TestCtlLockBumps(t *testing.T) {
	s, _ := testServer(t, "lock_duration 3600")
	g := testGeneration(t, s)
	g.enable()
	v := g.value()
	if r := s.control(&ipc.LockdCtl{Command: "lock", Args: []string{"192.0.2.1", "1h", "abuse"}}); r.Code != ipc.CtlOK {
		t.Fatalf("lock: %+v", r)
	}
	if g.value() == v || g.value() == 0 {
		t.Errorf("generation %d after smtpgatectl lock, was %d", g.value(), v)
	}
}
