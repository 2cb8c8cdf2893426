package master

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

func sampleSnapshot() *snapshot {
	now := time.Unix(1700000100, 0)
	return &snapshot{
		Version: "1.5.0", Pid: 42, Now: now, Started: now.Add(-(26*time.Hour + 3*time.Minute + 4*time.Second)),
		Reloaded: now.Add(-time.Hour), Current: 2, Max: 64, Viruses: 3, Spam: 1, Requests: 10, Direct: 1, Empty: 4,
		Rejects:  [7]uint64{1, 0, 2, 0, 0, 0, 5},
		Closes:   map[string]uint64{"quit": 6, "virus": 3, "spam": 1},
		Restarts: map[string]int{"session 0": 1, "lookup": 0},
		Sessions: []liveRow{
			{SessionRow: ipc.SessionRow{ID: 7, State: "data", Target: netip.MustParseAddrPort("198.51.100.25:25"),
				Transaction: 1, Auth: 3, ClientRx: 10000, ServerRx: 500}, Src: netip.MustParseAddrPort("192.0.2.7:40112"),
				Start: now.Add(-10 * time.Second), Worker: "session 0", Pid: 100},
			{SessionRow: ipc.SessionRow{ID: 9, State: "?", Ident: "bob"}, Src: netip.MustParseAddrPort("[2001:db8::1]:5000"),
				Start: now, Worker: "session 1", Pid: 101},
		},
	}
}

func TestFormatState(t *testing.T) {
	s := sampleSnapshot()
	cases := []struct {
		typ  config.StatefileType
		want []string
		not  []string
	}{
		{config.StatefileHuman | config.StatefileSlots, []string{
			"Uptime: 1d 2h 3m 4s\n", "Children: 2/64 (current/max)\n", "Found: 3/1 (viruses/spam)\n",
			"Requests: 10/1/4 (total/direct/empty)\n", "Rejects: 1/0/2/0/0/0/5 (host/ident/lock/dnsbl/rate/ratelimit/other)\n",
			"0    100     7        data     aA        10 192.0.2.7:40112", "198.51.100.25:25", "     8.4 -\n",
			"1    101     9        ?        -          0 [2001:db8::1]:5000", " bob\n"},
			[]string{"slots.used"}},
		{config.StatefileFlat, []string{"requests.total: 10\n", "rejects.other: 5\n", "closed.quit: 6\n", "slots.used: 2\n",
			"slot.0.src.ip: 192.0.2.7\n", "slot.0.src.port: 40112\n", "slot.0.dst.port: 25\n", "slot.0.flags: aA\n",
			"slot.0.kbps: 8.4\n", "slot.1.src.ip: 2001:db8::1\n", "slot.1.ident: bob\n", "slot.1.dst.ip: \n"},
			[]string{"Uptime:", "slot pid"}},
		{config.StatefileSlots, []string{"slot pid     id", "0    100     7"}, []string{"Uptime:", "slots.used"}},
	}
	for _, c := range cases {
		var b strings.Builder
		formatState(&b, c.typ, s)
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%v: no %q in\n%s", c.typ, w, b.String())
			}
		}
		for _, n := range c.not {
			if strings.Contains(b.String(), n) {
				t.Errorf("%v: %q in\n%s", c.typ, n, b.String())
			}
		}
	}
}

func TestPrometheus(t *testing.T) {
	var b strings.Builder
	prometheus(&b, sampleSnapshot())
	text := b.String()
	for _, w := range []string{
		"# HELP smtpgated_requests_total ", "# TYPE smtpgated_requests_total counter\nsmtpgated_requests_total 10\n",
		`smtpgated_found_total{kind="virus"} 3` + "\n", `smtpgated_rejects_total{cause="lock"} 2` + "\n",
		`smtpgated_sessions_closed_total{by="quit"} 6` + "\n", "# TYPE smtpgated_sessions gauge\nsmtpgated_sessions 2\n",
		`smtpgated_process_restarts_total{process="session 0"} 1` + "\n",
	} {
		if !strings.Contains(text, w) {
			t.Errorf("no %q in\n%s", w, text)
		}
	}
	for line := range strings.SplitSeq(strings.TrimSuffix(text, "\n"), "\n") {
		if !strings.HasPrefix(line, "# ") && !strings.HasPrefix(line, "smtpgated_") {
			t.Errorf("line %q", line)
		}
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "state")
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	if err := writeAtomic(path, []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A planted temporary name is replaced, not written through.
	os.Symlink(filepath.Join(dir, "victim"), path+".tmp")
	if err := writeAtomic(path, []byte("two\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if string(b) != "two\n" || fi.Mode().Perm() != 0o640 {
		t.Errorf("statefile %q mode %v, want \"two\\n\" 0640", b, fi.Mode().Perm())
	}
	if _, err := os.Lstat(filepath.Join(dir, "victim")); err == nil {
		t.Errorf("written through the planted symlink")
	}
	if _, err := os.Lstat(path + ".tmp"); err == nil {
		t.Errorf("temporary file left")
	}
}
