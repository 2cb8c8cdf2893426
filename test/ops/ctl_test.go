package ops

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// promLine is one sample line of the Prometheus text format.
var promLine = regexp.MustCompile(`^(smtpgated_[a-z_]+)(\{[a-z]+="[^"\\]*"\})? (-?[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?)$`)

// checkPrometheus checks text against the exposition format's rules a
// textfile collector enforces: # HELP and # TYPE before a metric's
// samples, once each, and a final newline.
func checkPrometheus(t *testing.T, text string) map[string]string {
	t.Helper()
	if !strings.HasSuffix(text, "\n") {
		t.Errorf("prometheus text does not end with a newline")
	}
	help, typ := map[string]bool{}, map[string]string{}
	samples := map[string]string{}
	for line := range strings.SplitSeq(strings.TrimSuffix(text, "\n"), "\n") {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "# HELP "):
			if len(f) < 4 || help[f[2]] {
				t.Errorf("bad or repeated HELP: %q", line)
			}
			help[f[2]] = true
		case strings.HasPrefix(line, "# TYPE "):
			if len(f) != 4 || (f[3] != "counter" && f[3] != "gauge") || typ[f[2]] != "" || !help[f[2]] {
				t.Errorf("bad TYPE, or TYPE without HELP first: %q", line)
			}
			typ[f[2]] = f[3]
		default:
			m := promLine.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("not a sample line: %q", line)
				continue
			}
			if typ[m[1]] == "" {
				t.Errorf("sample before its # TYPE: %q", line)
			}
			if typ[m[1]] == "counter" && !strings.HasSuffix(m[1], "_total") {
				t.Errorf("counter %s without _total", m[1])
			}
			samples[m[1]+m[2]] = m[3]
		}
	}
	return samples
}

// Every smtpgatectl command against a running daemon, with its exit
// status and what it prints; privileged ones refused to another user.
func TestCtlCommands(t *testing.T) {
	needRoot(t)
	s := newSetup(t)
	d := s.start(t)
	bin := harness.DaemonBinary(t)

	// status, unprivileged too.
	for _, cred := range []any{nil, nobody} {
		r := s.ctl(t, credOf(cred), "status")
		if r.code != 0 || !strings.Contains(r.stdout, "Children: 0/64 (current/max)") || !strings.Contains(r.stdout, "session 1") {
			t.Errorf("status as %v: %v", cred, r)
		}
	}

	// sessions: the live ones.
	c1, c2 := greeted(t, s.addr()), greeted(t, s.addr())
	d.WaitLog(t, regexp.MustCompile(`\[2\] connected to`), 10*time.Second)
	r := s.ctl(t, nobody, "sessions")
	if r.code != 0 {
		t.Fatalf("sessions: %v", r)
	}
	rows := parseTable(t, r.stdout)
	sameSources(t, "smtpgatectl sessions", rows, map[string]bool{
		c1.Conn().LocalAddr().String(): true, c2.Conn().LocalAddr().String(): true})

	// kill SESSION: the session ends with by=killed, the client is cut.
	id := rows[c1.Conn().LocalAddr().String()].id
	m := d.Mark()
	if r := s.ctl(t, nil, "kill", fmt.Sprint(id)); r.code != 0 || r.stdout != fmt.Sprintf("session %d killed\n", id) {
		t.Errorf("kill %d: %v", id, r)
	}
	d.WaitLogAfter(t, m, regexp.MustCompile(fmt.Sprintf(`CLOSE by=killed, .*id=%d$`, id)), 5*time.Second)
	c1.SetTimeout(5 * time.Second)
	c1.ExpectClosed()
	if r := s.ctl(t, nil, "kill", fmt.Sprint(id)); r.code != 5 || !strings.Contains(r.stderr, "no such session") {
		t.Errorf("kill of an ended session: %v, want exit 5", r)
	}
	if r := s.ctl(t, nil, "kill", "x1"); r.code != 2 {
		t.Errorf("kill x1: %v, want exit 2", r)
	}
	m = d.Mark()
	c2.Quit()
	d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=quit, .*id=2$`), 5*time.Second)

	// stats and stats --prometheus.
	r = s.ctl(t, nobody, "stats")
	if r.code != 0 || !strings.Contains(r.stdout, "requests.total: 2\n") || !strings.Contains(r.stdout, "closed.killed: 1\n") {
		t.Errorf("stats: %v", r)
	}
	r = s.ctl(t, nobody, "stats", "--prometheus")
	if r.code != 0 {
		t.Fatalf("stats --prometheus: %v", r)
	}
	smp := checkPrometheus(t, r.stdout)
	for k, v := range map[string]string{
		`smtpgated_requests_total`:                          "2",
		`smtpgated_sessions_closed_total{by="killed"}`:      "1",
		`smtpgated_sessions_max`:                            "64",
		`smtpgated_process_restarts_total{process="lockd"}`: "0",
	} {
		if smp[k] != v {
			t.Errorf("prometheus %s = %q, want %q\n%s", k, smp[k], v, r.stdout)
		}
	}
	if r := s.ctl(t, nil, "stats", "--bogus"); r.code != 2 {
		t.Errorf("stats --bogus: %v, want exit 2", r)
	}

	// dump writes the statefile and prints it.
	if r := s.ctl(t, nobody, "dump"); r.code != 0 || !strings.Contains(r.stdout, "Requests: 2/0/2 (total/direct/empty)") {
		t.Errorf("dump: %v", r)
	} else if b, _ := os.ReadFile(s.state()); string(b) != r.stdout {
		t.Errorf("dump printed %q, the statefile holds %q", r.stdout, b)
	}

	// show config: the running configuration, as -T prints it.
	r = s.ctl(t, nil, "show", "config")
	want := run(t, nil, bin, "-T", d.ConfigFile())
	if r.code != 0 || want.code != 0 || r.stdout != want.stdout {
		t.Errorf("show config: %v\nwant smtp-gated -T's output:\n%s", r, want.stdout)
	}

	// log level: every process stops writing debug lines, then starts again.
	if r := s.ctl(t, nil, "log", "level", "info"); r.code != 0 || r.stdout != "log level info\n" {
		t.Fatalf("log level info: %v", r)
	}
	if r := s.ctl(t, nil, "show", "config"); !regexp.MustCompile(`(?m)^log_level\s+info$`).MatchString(r.stdout) {
		t.Errorf("show config after log level info has no log_level info:\n%s", r.stdout)
	}
	m = d.Mark()
	twoSessions(t, s) // one on each worker
	d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=quit, .*id=4$`), 5*time.Second)
	for _, line := range d.LogSince(m) {
		if strings.Contains(line, "debug: ") {
			t.Errorf("debug line after log level info: %q", line)
		}
	}
	if r := s.ctl(t, nil, "log", "level", "debug"); r.code != 0 {
		t.Fatalf("log level debug: %v", r)
	}
	m = d.Mark()
	twoSessions(t, s)
	d.WaitLogAfter(t, m, regexp.MustCompile(`debug: session 0: \[\d+\] connected to`), 5*time.Second)
	d.WaitLogAfter(t, m, regexp.MustCompile(`debug: session 1: \[\d+\] connected to`), 5*time.Second)
	if r := s.ctl(t, nil, "log", "level", "loud"); r.code != 2 {
		t.Errorf("log level loud: %v, want exit 2", r)
	}

	// Usage errors and an unreachable daemon.
	for _, args := range [][]string{{"frobnicate"}, {"status", "now"}, {"show", "secrets"}, {"log", "info"}, {"kill"}} {
		if r := s.ctl(t, nil, args...); r.code != 2 || r.stderr == "" {
			t.Errorf("smtpgatectl %v: %v, want exit 2 with a message", args, r)
		}
	}
	if r := run(t, nil, harness.CtlBinary(t)); r.code != 2 {
		t.Errorf("smtpgatectl without a command: %v, want exit 2", r)
	}
	if r := run(t, nil, harness.CtlBinary(t), "-s", s.dir+"/nothing.sock", "status"); r.code != 3 || r.stderr == "" {
		t.Errorf("smtpgatectl against no daemon: %v, want exit 3", r)
	}

	// Privileged commands refused to another user, with exit 4 and a
	// message; the daemon unchanged.
	for _, args := range [][]string{{"show", "config"}, {"reload"}, {"stop"}, {"kill", "1"}, {"log", "level", "info"}} {
		r := s.ctl(t, nobody, args...)
		if r.code != 4 || !strings.Contains(r.stderr, "permission denied") {
			t.Errorf("smtpgatectl %v as uid 65534: %v, want exit 4, permission denied", args, r)
		}
	}

	// A second daemon on the same control socket refuses to start.
	other := strings.Replace(s.config(), fmt.Sprintf("port %d", s.port), fmt.Sprintf("port %d", harness.FreePort(t)), 1)
	other = strings.Replace(other, "pidfile "+s.dir+"/smtp-gated.pid", "pidfile "+s.dir+"/other.pid", 1)
	d2 := harness.StartDaemon(t, other, harness.WithoutReady())
	if code := d2.WaitExit(t, 20*time.Second); code != 1 || !strings.Contains(d2.Log(), "another smtp-gated answers") {
		t.Errorf("second daemon on the same control socket: exit %d\n%s", code, d2.Log())
	}

	// reload, then stop.
	m = d.Mark()
	if r := s.ctl(t, nil, "reload"); r.code != 0 || r.stdout != "reloaded\n" {
		t.Errorf("reload: %v", r)
	}
	d.WaitNotifyAfter(t, m, "RELOADING=1", 5*time.Second)
	if err := os.WriteFile(d.ConfigFile(), []byte("mode bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := s.ctl(t, nil, "reload"); r.code != 1 || !strings.Contains(r.stderr, "reload failed") {
		t.Errorf("reload of a broken file: %v, want exit 1", r)
	}
	if r := s.ctl(t, nil, "stop"); r.code != 0 || r.stdout != "stopping\n" {
		t.Errorf("stop: %v", r)
	}
	if code := d.WaitExit(t, 20*time.Second); code != 0 {
		t.Errorf("daemon exit status %d after stop", code)
	}
}

// twoSessions opens two sessions at once (one on each worker), then
// quits both.
func twoSessions(t *testing.T, s *setup) {
	t.Helper()
	a, b := greeted(t, s.addr()), greeted(t, s.addr())
	a.Quit()
	b.Quit()
}
