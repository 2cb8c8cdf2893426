package lockd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"smtp-gated/ipc"
)

func ctl(t testing.TB, s *server, wantCode ipc.CtlStatus, command string, args ...string) string {
	t.Helper()
	r := s.control(&ipc.LockdCtl{Command: command, Args: args, UID: 0})
	if r.Code != wantCode {
		t.Fatalf("%s %q: code %d, want %d: %s", command, args, r.Code, wantCode, r.Text)
	}
	return r.Text
}

func TestCtlLocks(t *testing.T) {
	s, _ := testServer(t, "lock_on virus", "lock_duration 3600")
	cfg := s.cfg.Load()
	if out := ctl(t, s, ipc.CtlOK, "locks"); !strings.Contains(out, "no locks") {
		t.Errorf("locks, none: %q", out)
	}
	ctl(t, s, ipc.CtlOK, "lock", "192.0.2.1")
	if b, _ := os.ReadFile(filepath.Join(cfg.LockPath, "192.0.2.1")); string(b) != "manual\n" {
		t.Errorf("lock without DURATION: %q, want the cause alone (lock_duration applies)", b)
	}
	ctl(t, s, ipc.CtlOK, "lock", "2001:db8::1-alice", "90m", "spam", "run")
	b, _ := os.ReadFile(filepath.Join(cfg.LockPath, "2001_db8__1-alice"))
	if lines := strings.Split(string(b), "\n"); len(lines) != 3 || lines[0] != "spam run" || !strings.HasPrefix(lines[1], "until ") {
		t.Errorf("lock with DURATION and CAUSE: %q", b)
	}
	ctl(t, s, ipc.CtlOK, "lock", "192.0.2.2", "forever")
	if !locked(t, s, &ipc.Policy{Client: cli4b}) || !locked(t, s, &ipc.Policy{Client: cli6, Ident: "alice"}) {
		t.Error("smtpgatectl locks are not locks")
	}
	out := ctl(t, s, ipc.CtlOK, "locks")
	for _, want := range []string{"CLIENT", "192.0.2.1  ", "manual", "2001:db8::1-alice", "spam run", "in 1h", "192.0.2.2", "never"} {
		if !strings.Contains(out, want) {
			t.Errorf("locks lacks %q:\n%s", want, out)
		}
	}
	// Replacing a lock.
	if out := ctl(t, s, ipc.CtlOK, "lock", "192.0.2.1", "1", "short"); !strings.Contains(out, `it was locked for "manual"`) {
		t.Errorf("replacing: %q", out)
	}
	time.Sleep(1100 * time.Millisecond)
	if locked(t, s, &ipc.Policy{Client: cli4}) {
		t.Error("a 1-second lock still holds")
	}
	// Unlock.
	ctl(t, s, ipc.CtlOK, "unlock", "192.0.2.2")
	ctl(t, s, ipc.CtlNotFound, "unlock", "192.0.2.2")
	if locked(t, s, &ipc.Policy{Client: cli4b}) {
		t.Error("still locked after unlock")
	}
	// Usage errors.
	for _, args := range [][]string{{"lock"}, {"lock", "example.org"}, {"lock", "192.0.2.1", "0"}, {"lock", "192.0.2.1", "-5"},
		{"lock", "192.0.2.1", "x\ny"}, {"unlock"}, {"unlock", "192.0.2.1", "x"}, {"locks", "x"},
		{"ratelimit"}, {"ratelimit", "show"}, {"ratelimit", "frob", "192.0.2.1"}, {"ratelimit", "reset", "192.0.2.1", "x"},
		{"ratelimit", "set", "192.0.2.1"}, {"ratelimit", "set", "192.0.2.1", "frobs=1"}, {"ratelimit", "set", "192.0.2.1", "connections"},
		{"ratelimit", "set", "192.0.2.1", "connections=-1"}, {"ratelimit", "set", "192.0.2.1", "generation=5"},
		{"ratelimit", "show", "1.2.3"}} {
		ctl(t, s, ipc.CtlUsage, args[0], args[1:]...)
	}
	// Locking off.
	s.setConfig(t, "lock_duration 0")
	ctl(t, s, ipc.CtlFailed, "lock", "192.0.2.9")
}

func TestCtlAdminFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to give a file to another user")
	}
	s, _ := testServer(t, "lock_on virus")
	path := filepath.Join(s.cfg.Load().LockPath, "192.0.2.1")
	os.WriteFile(path, []byte("mine\n"), 0o644)
	os.Chown(path, 65534, 65534)
	if out := ctl(t, s, ipc.CtlFailed, "lock", "192.0.2.1-bob"); !strings.Contains(out, "administrator's file") {
		t.Errorf("lock of a protected client: %q", out)
	}
	if out := ctl(t, s, ipc.CtlFailed, "unlock", "192.0.2.1"); !strings.Contains(out, "administrator's file") {
		t.Errorf("unlock of an administrator's file: %q", out)
	}
	if out := ctl(t, s, ipc.CtlOK, "locks"); !strings.Contains(out, "administrator's file") || !strings.Contains(out, "nobody") {
		t.Errorf("locks: %q", out)
	}
	if _, err := os.Stat(path); err != nil {
		t.Error(err)
	}
}

func TestCtlRatelimit(t *testing.T) {
	s, _ := testServer(t, "ratelimit_period 3600", "ratelimit_generation 10", "ratelimit_connections 3")
	if out := ctl(t, s, ipc.CtlOK, "ratelimit", "show", "192.0.2.1"); !strings.Contains(out, "no record yet") || !strings.Contains(out, "connections       0      3") {
		t.Errorf("show without a record:\n%s", out)
	}
	take := &ipc.Policy{Client: cli4, Take: []string{ipc.RateConnections}}
	ask(t, s, take)
	ask(t, s, take)
	out := ctl(t, s, ipc.CtlOK, "ratelimit", "set", "192.0.2.1", "connections=5", "sessions=7")
	for _, want := range []string{"quotas of its own: never replaced", "connections       2      5", "messages          0      7"} {
		if !strings.Contains(out, want) {
			t.Errorf("set: lacks %q:\n%s", want, out)
		}
	}
	// A higher ratelimit_generation does not replace personal quotas.
	s.setConfig(t, "ratelimit_period 3600", "ratelimit_generation 99999999999999", "ratelimit_connections 1")
	for i := range 3 {
		if a := ask(t, s, take); a.Over != "" {
			t.Fatalf("connection %d: over %s with a personal quota of 5", i+3, a.Over)
		}
	}
	if a := ask(t, s, take); a.Over != ipc.RateConnections {
		t.Fatalf("connection 6: over %q, want connections", a.Over)
	}
	// A given generation is replaced by a higher configuration's.
	ctl(t, s, ipc.CtlUsage, "ratelimit", "set", "192.0.2.2", "connections=1", "generation=99999999999999")
	ctl(t, s, ipc.CtlOK, "ratelimit", "set", "192.0.2.2", "connections=1", "generation=100000000000000")
	if r := s.testRecord(t, cli4b, ""); r.Generation != 100000000000000 || r.Quota[0] != 1 {
		t.Errorf("record %+v", r)
	}
	// reset: counts; reset all: the record.
	out = ctl(t, s, ipc.CtlOK, "ratelimit", "reset", "192.0.2.1")
	if !strings.Contains(out, "connections       0      5") {
		t.Errorf("reset:\n%s", out)
	}
	ctl(t, s, ipc.CtlOK, "ratelimit", "reset", "192.0.2.1", "all")
	ctl(t, s, ipc.CtlNotFound, "ratelimit", "reset", "192.0.2.1", "all")
	ctl(t, s, ipc.CtlNotFound, "ratelimit", "reset", "192.0.2.1")
	if out := ctl(t, s, ipc.CtlOK, "ratelimit", "show", "192.0.2.1"); !strings.Contains(out, "connections       0      1") {
		t.Errorf("after reset all, the configuration's quota:\n%s", out)
	}
	// A corrupt file is shown as such.
	os.WriteFile(filepath.Join(s.cfg.Load().RatelimitPath, "192.0.2.1"), []byte("junk"), 0o640)
	if out := ctl(t, s, ipc.CtlOK, "ratelimit", "show", "192.0.2.1"); !strings.Contains(out, "corrupt") {
		t.Errorf("show of a corrupt file:\n%s", out)
	}
}
