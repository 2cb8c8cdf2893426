package master

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

func sampleSnapshot() *snapshot {
	now := time.Unix(1700000100, 0)
	return &snapshot{
		Version: "1.5.0", BuildDate: "Dec  2 2026 13:42:32", Pid: 42, Now: now,
		Started: now.Add(-(26*time.Hour + 3*time.Minute + 4*time.Second)), Reloaded: now.Add(-time.Hour),
		Resource: "2304/0/0/0", Current: 2, Peak: 5, Limit: 64, Crashes: 1, CrashLast: now.Add(-time.Minute),
		Viruses: 3, Spam: 1, NoAuth: 2, SPF: 4, Regex: 6, Earlytalk: 7,
		Requests: 10, Direct: 1, Empty: 4, Rejects: [7]uint64{1, 0, 2, 0, 0, 0, 5},
		Pipeline: 8, AuthOK: 9, AuthFail: 11,
		Closes:   map[string]uint64{"quit": 6, "virus": 3, "spam": 1},
		Restarts: map[string]int{"session 0": 1, "lookup": 0},
		Sessions: []liveRow{
			{SessionRow: ipc.SessionRow{ID: 7, State: "data", Target: netip.MustParseAddrPort("198.51.100.25:25"),
				Transaction: 1, Auth: 3, ClientRx: 10000, ServerRx: 500}, Src: netip.MustParseAddrPort("192.0.2.7:40112"),
				Start: now.Add(-70 * time.Second), Worker: "session 0", Pid: 100, Slot: 63},
			{SessionRow: ipc.SessionRow{ID: 9, State: "helo", Auth: 1}, Src: netip.MustParseAddrPort("192.0.2.8:5000"),
				Start: now, Worker: "session 1", Pid: 101, Slot: 62},
			{SessionRow: ipc.SessionRow{ID: 10, State: "?", Ident: "bob"}, Src: netip.MustParseAddrPort("[2001:db8::1]:5000"),
				Start: now, Worker: "session 1", Pid: 101, Slot: 61},
		},
	}
}

// The status file in 1.4's layouts, line by line (BEHAVIOUR-1.4.21 §4):
// human, human with slots, flat, flat with slots; flat and human never
// together.
func TestFormatState(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	const summary = `Version:      1.5.0
Compile date: Dec  2 2026 13:42:32
Dump time:    Tue Nov 14 22:15:00 2023
Start time:   Mon Nov 13 20:11:56 2023
Restart time: Tue Nov 14 21:15:00 2023
Last crash:   Tue Nov 14 22:14:00 2023
Last BUG:     Thu Jan  1 00:00:00 1970
Uptime:   1d 2h 3m 4s
Resource: 2304/0/0/0 (maxrss/ixrss/idrss/isrss)
Children: 2/5/1/0 (current/max/crashed/bugs)
Found:    3/1/2/4/6 (viruses/spam/no-auth/spf/regex/earlytalk)
Requests: 10/1/4 (total/direct/empty)
Rejects:  1/0/2/0/0/0/5 (host/ident/lock/dnsbl/rate/ratelimit/other)
Errors:   8 (pipeline)
Auth:     9/11 (accepted/rejected)

  slot pid   state    flags time  source          target          trns   cli_rx   srv_rx    kbps ident
`
	const rows = `    63 100   data     A     01:10 192.0.2.7       198.51.100.25      1    10000      500     1.1 
    62 101   helo     a     00:00 192.0.2.8       0.0.0.0            0        0        0     0.0 
    61 101   ?        .     00:00 2001:db8::1     0.0.0.0            0        0        0     0.0 bob
`
	const flatKeys = `version: 1.5.0
time.dump.unix: 1700000100
time.dump.string: Tue Nov 14 22:15:00 2023
time.start.unix: 1699906316
time.start.string: Mon Nov 13 20:11:56 2023
time.restart.unix: 1699996500
time.restart.string: Tue Nov 14 21:15:00 2023
uptime.ticks: 93784
uptime.string: 1d 2h 3m 4s
Resource: 2304/0/0/0 (maxrss/ixrss/idrss/isrss)
children.current: 2
children.max: 5
children.crashes: 1
children.crash_last: 1700000040
children.bugs: 0
children.bug_last: 0
found.viruses: 3
found.spams: 1
found.noauths: 2
found.spf: 4
found.regex: 6
found.earlytalk: 7
requests.total: 10
requests.direct: 1
requests.empty: 4
rejects.host: 1
rejects.ident: 0
rejects.lock: 2
rejects.dnsbl: 0
rejects.rate: 0
rejects.ratelimit: 0
rejects.other: 5
errors.pipeline: 8
auth.accepts: 9
auth.rejects: 11
pid: 42
children.limit: 64
sessions.lost: 0
bytes.client: 0
bytes.server: 0
closed.quit: 6
closed.spam: 1
closed.virus: 3
`
	const flatSlots = `slots.used: 3
slot.63.pid: 100
slot.63.start.unix: 1700000030
slot.63.start.string: Tue Nov 14 22:13:50 2023
slot.63.state: data
slot.63.src.ip: 192.0.2.7
slot.63.flags: A
slot.63.id: 7
slot.63.src.port: 40112
slot.63.dst.ip: 198.51.100.25
slot.63.dst.port: 25
slot.63.time: 70
slot.63.trns: 1
slot.63.cli_rx: 10000
slot.63.srv_rx: 500
slot.63.kbps: 1.1
slot.63.ident: 
`
	cases := []struct {
		typ  config.StatefileType
		want string
	}{
		{config.StatefileHuman, summary},
		{config.StatefileHuman | config.StatefileSlots, summary + rows},
		{config.StatefileFlat, flatKeys},
		{config.StatefileFlat | config.StatefileHuman, flatKeys},
		{config.StatefileFlat | config.StatefileSlots, flatKeys + flatSlots},
	}
	for _, c := range cases {
		var b strings.Builder
		formatState(&b, c.typ, sampleSnapshot())
		got := b.String()
		if c.typ == config.StatefileFlat|config.StatefileSlots {
			// The first slot's group; the others follow.
			got = got[:len(flatKeys)+len(flatSlots)]
		}
		if got != c.want {
			t.Errorf("%v:\n%s", c.typ, diffLines(got, c.want))
		}
	}
}

// diffLines shows the lines of got and want that differ.
func diffLines(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "line %d: got  %q\n        want %q\n", i+1, gl, wl)
		}
	}
	return b.String()
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

// What a session's end adds to the counters, once per session, and the
// slots of 1.4: from max_connections-1 down, a freed one used again.
func TestCountEndAndSlots(t *testing.T) {
	m := newMaster(Options{}, logx.Discard())
	a := m.adm
	a.maxConnections = 3
	a.countEnd(&ipc.SessionEnd{By: ipc.CloseQuit, Auth: 3, Events: ipc.EventSPF | ipc.EventRatelimit})
	a.countEnd(&ipc.SessionEnd{By: ipc.CloseRatelimit, Auth: 1, Events: ipc.EventRatelimit})
	a.countEnd(&ipc.SessionEnd{By: ipc.CloseClient, Auth: 5, Events: ipc.EventsAll})
	a.countEnd(&ipc.SessionEnd{By: ipc.CloseMaxhost})
	a.countEnd(&ipc.SessionEnd{By: ipc.CloseLoad})
	s := m.snap(false)
	got := fmt.Sprint(s.AuthOK, s.AuthFail, s.NoAuth, s.SPF, s.Regex, s.Earlytalk, s.Pipeline, s.Rejects)
	if want := "1 1 1 2 1 1 1 [1 0 0 0 1 2 1]"; got != want {
		t.Errorf("auth ok/fail, noauth, spf, regex, earlytalk, pipeline, rejects: %s, want %s", got, want)
	}
	var slots []int
	for range 3 {
		slots = append(slots, a.takeSlot())
	}
	a.freeSlots = append(a.freeSlots, 1)
	slots = append(slots, a.takeSlot())
	if fmt.Sprint(slots) != "[2 1 0 1]" {
		t.Errorf("slots %v, want [2 1 0 1]", slots)
	}
}

// 1.4's summary line at stop.
func TestStatsLine(t *testing.T) {
	want := "uptime=1d2h3m4s maxchildren=5 crash=1@1700000040 bugs=0@0 found=3/1/2/4 requests=10/1/4 rejects=1/0/2/0/6/0/0/5"
	if got := statsLine(sampleSnapshot()); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
