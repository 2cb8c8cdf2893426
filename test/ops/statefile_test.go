package ops

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// tableRow is one session line of the status table.
type tableRow struct {
	slot, pid, id          int
	state, flags, src, dst string
	trns                   int
	cliRx, srvRx           int64
}

var tableHead = regexp.MustCompile(`(?m)^slot\s+pid\s+id\s+state\s+flags\s+time\s+source\s+target\s+trns\s+cli_rx\s+srv_rx\s+kbps\s+ident$`)

// parseTable reads the session table of `smtpgatectl sessions`.
func parseTable(t *testing.T, text string) map[string]tableRow {
	t.Helper()
	loc := tableHead.FindStringIndex(text)
	if loc == nil {
		t.Fatalf("no session table header in:\n%s", text)
	}
	rows := map[string]tableRow{}
	for i, line := range strings.Split(text[loc[1]:], "\n") {
		if i == 0 {
			continue // the rest of the header line
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		if len(f) != 13 {
			t.Fatalf("table row %q has %d fields, want 13", line, len(f))
		}
		r := tableRow{state: f[3], flags: f[4], src: f[6], dst: f[7]}
		r.slot, _ = strconv.Atoi(f[0])
		r.pid, _ = strconv.Atoi(f[1])
		r.id, _ = strconv.Atoi(f[2])
		r.trns, _ = strconv.Atoi(f[8])
		r.cliRx, _ = strconv.ParseInt(f[9], 10, 64)
		r.srvRx, _ = strconv.ParseInt(f[10], 10, 64)
		if _, dup := rows[r.src]; dup {
			t.Fatalf("source %s twice in the table:\n%s", r.src, text)
		}
		rows[r.src] = r
	}
	return rows
}

// humanLines are the lines of 1.4's human status file before the
// session rows (BEHAVIOUR-1.4.21 §4.1), each a pattern of the whole line.
var humanLines = []string{
	`Version:      \d+\.\d+\.\d+`,
	`Compile date: [A-Z][a-z]{2} [ \d]\d \d{4} \d\d:\d\d:\d\d`,
	`Dump time:    ` + cTime,
	`Start time:   ` + cTime,
	`Restart time: ` + cTime,
	`Last crash:   ` + cTime,
	`Last BUG:     ` + cTime,
	`Uptime:   \d+d \d+h \d+m \d+s`,
	`Resource: \d+/\d+/\d+/\d+ \(maxrss/ixrss/idrss/isrss\)`,
	`Children: \d+/\d+/\d+/\d+ \(current/max/crashed/bugs\)`,
	`Found:    \d+/\d+/\d+/\d+/\d+ \(viruses/spam/no-auth/spf/regex/earlytalk\)`,
	`Requests: \d+/\d+/\d+ \(total/direct/empty\)`,
	`Rejects:  \d+/\d+/\d+/\d+/\d+/\d+/\d+ \(host/ident/lock/dnsbl/rate/ratelimit/other\)`,
	`Errors:   \d+ \(pipeline\)`,
	`Auth:     \d+/\d+ \(accepted/rejected\)`,
	``,
	`  slot pid   state    flags time  source          target          trns   cli_rx   srv_rx    kbps ident`,
}

// cTime is C's strftime %c.
const cTime = `[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}`

// parseHuman checks a status file in 1.4's human layout line by line and
// returns its summary lines and its session rows by slot number (1.4's
// rows show the client's address without its port). Each row must be
// exactly what 1.4's format makes of its fields.
func parseHuman(t *testing.T, text string) ([]string, map[int]tableRow) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if !strings.HasSuffix(text, "\n") || len(lines) < len(humanLines) {
		t.Fatalf("human status file too short:\n%s", text)
	}
	for i, re := range humanLines {
		if !regexp.MustCompile(`^` + re + `$`).MatchString(lines[i]) {
			t.Errorf("human line %d is %q, want /%s/", i+1, lines[i], re)
		}
	}
	rows := map[int]tableRow{}
	for _, line := range lines[len(humanLines):] {
		f := strings.Split(strings.Join(strings.Fields(line), " "), " ")
		if len(f) == 11 {
			f = append(f, "") // no ident
		}
		if len(f) != 12 {
			t.Fatalf("slot row %q has %d fields", line, len(f))
		}
		var r tableRow
		var mm, ss int
		var kbps float64
		r.slot, _ = strconv.Atoi(f[0])
		r.pid, _ = strconv.Atoi(f[1])
		r.state, r.flags = f[2], f[3]
		fmt.Sscanf(f[4], "%d:%d", &mm, &ss)
		r.src, r.dst = f[5], f[6]
		r.trns, _ = strconv.Atoi(f[7])
		r.cliRx, _ = strconv.ParseInt(f[8], 10, 64)
		r.srvRx, _ = strconv.ParseInt(f[9], 10, 64)
		kbps, _ = strconv.ParseFloat(f[10], 64)
		want := fmt.Sprintf("%6d %-5d %-8s %-5s %02d:%02d %-15s %-15s %4d %8d %8d %7.1f %s",
			r.slot, r.pid, r.state, r.flags, mm, ss, r.src, r.dst, r.trns, r.cliRx, r.srvRx, kbps, f[11])
		if line != want {
			t.Errorf("slot row\n%q, 1.4's format makes\n%q", line, want)
		}
		if _, dup := rows[r.slot]; dup {
			t.Fatalf("slot %d twice in the table:\n%s", r.slot, text)
		}
		rows[r.slot] = r
	}
	return lines[:len(humanLines)-2], rows
}

// flatKeys are 1.4's keys of the flat status file, in its order.
var flatKeys = []string{"version", "time.dump.unix", "time.dump.string", "time.start.unix", "time.start.string",
	"time.restart.unix", "time.restart.string", "uptime.ticks", "uptime.string", "Resource",
	"children.current", "children.max", "children.crashes", "children.crash_last", "children.bugs", "children.bug_last",
	"found.viruses", "found.spams", "found.noauths", "found.spf", "found.regex", "found.earlytalk",
	"requests.total", "requests.direct", "requests.empty",
	"rejects.host", "rejects.ident", "rejects.lock", "rejects.dnsbl", "rejects.rate", "rejects.ratelimit", "rejects.other",
	"errors.pipeline", "auth.accepts", "auth.rejects"}

// slotKeys are 1.4's keys of one session, after slot.N.
var slotKeys = []string{"pid", "start.unix", "start.string", "state", "src.ip", "flags"}

// parseFlat reads a status file in 1.4's flat layout: 1.4's keys first
// and in its order, then this version's; the sessions as slot.N.* groups,
// each with 1.4's keys first. Rows are keyed by source address.
func parseFlat(t *testing.T, text string) (map[string]string, map[string]tableRow) {
	t.Helper()
	kv := map[string]string{}
	var order []string
	for line := range strings.SplitSeq(strings.TrimSuffix(text, "\n"), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok || strings.Contains(k, " ") {
			t.Fatalf("flat line %q is not key: value", line)
		}
		if _, dup := kv[k]; dup {
			t.Fatalf("flat key %s twice", k)
		}
		kv[k] = v
		order = append(order, k)
	}
	if len(order) < len(flatKeys) || strings.Join(order[:len(flatKeys)], " ") != strings.Join(flatKeys, " ") {
		t.Fatalf("flat keys begin\n%v\nwant 1.4's\n%v", order[:min(len(order), len(flatKeys))], flatKeys)
	}
	if kv["Resource"] == "" || !strings.HasSuffix(kv["Resource"], " (maxrss/ixrss/idrss/isrss)") {
		t.Errorf("flat Resource line %q", kv["Resource"])
	}
	rows := map[string]tableRow{}
	slot := regexp.MustCompile(`^slot\.(\d+)\.pid$`)
	for i, k := range order {
		m := slot.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		p := "slot." + m[1] + "."
		for j, sk := range slotKeys {
			if i+j >= len(order) || order[i+j] != p+sk {
				t.Fatalf("slot %s: keys %v, want 1.4's %v first", m[1], order[i:min(len(order), i+len(slotKeys))], slotKeys)
			}
		}
		r := tableRow{state: kv[p+"state"], flags: kv[p+"flags"],
			src: kv[p+"src.ip"] + ":" + kv[p+"src.port"], dst: kv[p+"dst.ip"] + ":" + kv[p+"dst.port"]}
		r.slot, _ = strconv.Atoi(m[1])
		r.pid, _ = strconv.Atoi(kv[p+"pid"])
		r.id, _ = strconv.Atoi(kv[p+"id"])
		r.trns, _ = strconv.Atoi(kv[p+"trns"])
		r.cliRx, _ = strconv.ParseInt(kv[p+"cli_rx"], 10, 64)
		r.srvRx, _ = strconv.ParseInt(kv[p+"srv_rx"], 10, 64)
		rows[r.src] = r
	}
	if n, _ := strconv.Atoi(kv["slots.used"]); n != len(rows) {
		t.Errorf("slots.used %q, %d slot groups", kv["slots.used"], len(rows))
	}
	return kv, rows
}

// dump sends USR1 and returns the statefile once the daemon says it
// wrote it.
func dump(t *testing.T, d *harness.Daemon, path string) string {
	t.Helper()
	m := d.Mark()
	if err := d.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	d.WaitLogAfter(t, m, regexp.MustCompile(`status written to `+regexp.QuoteMeta(path)), 10*time.Second)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp left behind (%v)", path, err)
	}
	return string(b)
}

func keys(m map[string]tableRow) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// sameSources fails unless the rows are exactly the sessions of live.
func sameSources(t *testing.T, what string, rows map[string]tableRow, live map[string]bool) {
	t.Helper()
	var want []string
	for s := range live {
		want = append(want, s)
	}
	sort.Strings(want)
	if got := keys(rows); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("%s lists sessions from\n  %v\nwant exactly the live ones\n  %v", what, got, want)
	}
}

// sameSlots fails unless the rows are exactly the slots of the sessions
// of live.
func sameSlots(t *testing.T, what string, rows map[int]tableRow, live map[string]bool, slotOf map[string]int) {
	t.Helper()
	var got, want []int
	for n := range rows {
		got = append(got, n)
	}
	for src := range live {
		want = append(want, slotOf[src])
	}
	sort.Ints(got)
	sort.Ints(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s lists slots %v, want exactly the live ones %v", what, got, want)
	}
}

// hasLines fails unless each of want is a line of lines.
func hasLines(t *testing.T, what string, lines []string, want ...string) {
	t.Helper()
	all := "\n" + strings.Join(lines, "\n") + "\n"
	for _, w := range want {
		if !strings.Contains(all, "\n"+w+"\n") {
			t.Errorf("%s: no line %q in\n%s", what, w, strings.Join(lines, "\n"))
		}
	}
}

// SIGUSR1 with 10 sessions open on 2 workers: the status file, in 1.4's
// layouts (human, flat, with and without slots), lists exactly those
// sessions in their 1.4 slots (from max_connections-1 down), with their
// state; Children max is the peak; `smtp-gated -s` from another process
// prints it.
func TestStatefileUnderLoad(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "statefile_perm 0640")
	workers := children(t, d)["session"]

	live := map[string]bool{}
	clients := map[string]*harness.Client{}
	var order []string
	for range 10 {
		c := greeted(t, s.addr())
		src := c.Conn().LocalAddr().String()
		live[src], clients[src] = true, c
		order = append(order, src)
	}
	// Two in a transaction, one of them in the middle of a message.
	clients[order[0]].Cmd("MAIL FROM:<a@example.com>", 250)
	inData := clients[order[1]]
	inData.Cmd("MAIL FROM:<a@example.com>", 250)
	inData.Cmd("RCPT TO:<b@example.org>", 250)
	inData.Cmd("DATA", 354)
	inData.Send("Subject: held\r\n\r\nhalf a message\r\n")
	for id := 1; id <= 10; id++ {
		d.WaitLog(t, regexp.MustCompile(fmt.Sprintf(`\[%d\] connected to`, id)), 10*time.Second)
	}

	// The slots, from smtpgatectl sessions, which shows the source port.
	slotOf := map[string]int{}
	r := s.ctl(t, nil, "sessions")
	for src, row := range parseTable(t, r.stdout) {
		slotOf[src] = row.slot
	}
	var slots []int
	for _, n := range slotOf {
		slots = append(slots, n)
	}
	sort.Ints(slots)
	if fmt.Sprint(slots) != "[54 55 56 57 58 59 60 61 62 63]" {
		t.Errorf("slots %v, want 54..63 (max_connections 64, from the top)", slots)
	}

	// The default, human,slots. The client in DATA may still be reading:
	// wait until its bytes are counted.
	var summary []string
	var rows map[int]tableRow
	for deadline := time.Now().Add(10 * time.Second); ; {
		summary, rows = parseHuman(t, dump(t, d, s.state()))
		if r := rows[slotOf[order[1]]]; r.state == "data" || time.Now().After(deadline) {
			break
		}
	}
	sameSlots(t, "human,slots", rows, live, slotOf)
	hasLines(t, "human,slots", summary, "Children: 10/10/0/0 (current/max/crashed/bugs)",
		"Found:    0/0/0/0/0 (viruses/spam/no-auth/spf/regex/earlytalk)", "Requests: 10/0/0 (total/direct/empty)",
		"Rejects:  0/0/0/0/0/0/0 (host/ident/lock/dnsbl/rate/ratelimit/other)", "Errors:   0 (pipeline)",
		"Auth:     0/0 (accepted/rejected)", "Last crash:   "+time.Unix(0, 0).Format("Mon Jan _2 15:04:05 2006"))
	used := map[int]bool{}
	for n, r := range rows {
		used[r.pid] = true
		if r.dst != "127.0.0.1" || r.src != "127.0.0.1" {
			t.Errorf("slot %d: source %s target %s, want 127.0.0.1 both", n, r.src, r.dst)
		}
		if r.cliRx == 0 || r.srvRx == 0 {
			t.Errorf("slot %d: cli_rx %d srv_rx %d, want both counted", n, r.cliRx, r.srvRx)
		}
		if r.flags != "a" && r.flags != "." {
			t.Errorf("slot %d: flags %q", n, r.flags)
		}
	}
	if r := rows[slotOf[order[0]]]; r.trns != 0 || r.state != "helo" { // a transaction is a DATA answered 354
		t.Errorf("session after MAIL FROM: trns %d state %s, want 0 helo", r.trns, r.state)
	}
	if r := rows[slotOf[order[1]]]; r.state != "data" || r.trns != 1 {
		t.Errorf("session in DATA: state %s trns %d, want data 1", r.state, r.trns)
	}
	if r := rows[slotOf[order[2]]]; r.state != "helo" || r.trns != 0 {
		t.Errorf("idle session: state %s trns %d, want helo 0", r.state, r.trns)
	}
	for _, w := range workers {
		if !used[w] {
			t.Errorf("no session of worker pid %d listed (pids listed: %v, workers %v)", w, used, workers)
		}
	}
	if len(used) != 2 {
		t.Errorf("sessions on pids %v, want the 2 workers %v", used, workers)
	}
	fi, err := os.Stat(s.state())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("statefile mode %v, want statefile_perm 0640", fi.Mode().Perm())
	}

	// Three end: the next dump lists the seven left, and max stays the
	// peak.
	freed := map[int]bool{}
	for _, src := range order[7:] {
		m := d.Mark()
		clients[src].Quit()
		d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=quit, .*`+harness.CloseSrc(src)), 10*time.Second)
		delete(live, src)
		freed[slotOf[src]] = true
	}
	summary, rows = parseHuman(t, dump(t, d, s.state()))
	sameSlots(t, "after 3 QUITs", rows, live, slotOf)
	hasLines(t, "after 3 QUITs", summary, "Children: 7/10/0/0 (current/max/crashed/bugs)",
		"Requests: 10/0/3 (total/direct/empty)")

	formats := []struct {
		typ         string
		flat, slots bool
	}{
		{"flat", true, false},
		{"slots", false, true}, // human, as 1.4: human has no bit
		{"human", false, false},
		{"human,flat,slots", true, true},
	}
	for _, f := range formats {
		if err := os.WriteFile(d.ConfigFile(), []byte(s.config("statefile_perm 0640", "statefile_type "+f.typ)), 0o644); err != nil {
			t.Fatal(err)
		}
		d.Reload(t)
		text := dump(t, d, s.state())
		if f.flat {
			kv, rows := parseFlat(t, text)
			if f.slots {
				sameSources(t, f.typ, rows, live)
				if r := rows[order[1]]; r.state != "data" || r.slot != slotOf[order[1]] {
					t.Errorf("%s: the session in DATA has state %q slot %d, want data %d", f.typ, r.state, r.slot, slotOf[order[1]])
				}
			} else if len(rows) != 0 || kv["slots.used"] != "" {
				t.Errorf("%s: slot keys without slots:\n%s", f.typ, text)
			}
			if kv["requests.total"] != "10" || kv["children.current"] != "7" || kv["children.max"] != "10" ||
				kv["closed.quit"] != "3" || kv["found.spams"] != "0" {
				t.Errorf("%s: requests.total %q children.current %q children.max %q closed.quit %q found.spams %q, want 10 7 10 3 0",
					f.typ, kv["requests.total"], kv["children.current"], kv["children.max"], kv["closed.quit"], kv["found.spams"])
			}
			up, _ := strconv.Atoi(kv["uptime.ticks"])
			if start, _ := strconv.ParseInt(kv["time.start.unix"], 10, 64); start == 0 || time.Since(time.Unix(start, 0)) < time.Duration(up)*time.Second {
				t.Errorf("%s: time.start.unix %q uptime.ticks %q", f.typ, kv["time.start.unix"], kv["uptime.ticks"])
			}
			continue
		}
		_, rows := parseHuman(t, text)
		if f.slots {
			sameSlots(t, f.typ, rows, live, slotOf)
		} else if len(rows) != 0 {
			t.Errorf("%s: session rows without slots:\n%s", f.typ, text)
		}
	}

	// A new session takes a freed slot.
	c := greeted(t, s.addr())
	src := c.Conn().LocalAddr().String()
	_, rows2 := parseFlat(t, dump(t, d, s.state()))
	if n := rows2[src].slot; !freed[n] {
		t.Errorf("a new session has slot %d, want one of the freed %v", n, freed)
	}
	m := d.Mark()
	c.Quit()
	d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=quit, .*`+harness.CloseSrc(src)), 10*time.Second)

	// smtp-gated -s from another process writes and prints the file;
	// -S names it.
	r = run(t, nil, harness.DaemonBinary(t), "-s", d.ConfigFile())
	if r.code != 0 {
		t.Fatalf("smtp-gated -s: %v", r)
	}
	file, _ := os.ReadFile(s.state())
	if r.stdout != string(file) {
		t.Errorf("smtp-gated -s printed\n%s\nthe statefile holds\n%s", r.stdout, file)
	}
	_, flatRows := parseFlat(t, r.stdout)
	sameSources(t, "smtp-gated -s (flat)", flatRows, live)
	if r := run(t, nil, harness.DaemonBinary(t), "-S", d.ConfigFile()); r.code != 0 || r.stdout != s.state()+"\n" {
		t.Errorf("smtp-gated -S: %v, want %s", r, s.state())
	}

	for src := range live {
		clients[src].Close()
	}
}

// The counters 1.4's status file adds: a MAIL FROM refused by
// auth_require (Found no-auth) and one by a regex (Found regex), a failed
// and an accepted AUTH (Auth, and the session's flag A), a connection
// over max_per_host (Rejects host), a session worker that died (Children
// crashed, Last crash), in both layouts.
func TestStatefileCounters(t *testing.T) {
	s := newSetup(t)
	opts := []string{"auth_require mandatory", "regex_reject_mail_from ^evil@", "max_per_host 1"}
	d := s.start(t, append(opts, "statefile_type human,slots")...)

	c := greeted(t, s.addr())
	over := harness.Dial(t, s.addr())
	over.Expect(554)
	over.Close()
	c.Cmd("MAIL FROM:<a@example.com>", 530)
	c.AuthPlain(s.pf.User, "wrong", 535)
	c.AuthPlain(s.pf.User, s.pf.Pass, 235)
	c.Cmd("MAIL FROM:<evil@example.com>", 550)
	_, rows := parseHuman(t, dump(t, d, s.state()))
	if len(rows) != 1 {
		t.Fatalf("%d session rows, want 1", len(rows))
	}
	for _, r := range rows {
		if r.flags != "A" {
			t.Errorf("authenticated session: flags %q, want A", r.flags)
		}
	}
	m := d.Mark()
	c.Quit()
	// The regex refusal took the session over: it ends by=regex.
	d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=regex, `), 10*time.Second)

	// A session worker killed by a signal is a crash.
	before := time.Now().Truncate(time.Second)
	victim := children(t, d)["session"][0]
	m = d.Mark()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.WaitLogAfter(t, m, regexp.MustCompile(`session \d restarted`), 20*time.Second)

	summary, _ := parseHuman(t, dump(t, d, s.state()))
	hasLines(t, "human", summary, "Children: 0/1/1/0 (current/max/crashed/bugs)",
		"Found:    0/0/1/0/1 (viruses/spam/no-auth/spf/regex/earlytalk)", "Auth:     1/1 (accepted/rejected)",
		"Requests: 2/0/1 (total/direct/empty)", "Rejects:  1/0/0/0/0/0/0 (host/ident/lock/dnsbl/rate/ratelimit/other)")
	for _, l := range summary {
		if v, ok := strings.CutPrefix(l, "Last crash:   "); ok {
			at, err := time.ParseInLocation("Mon Jan _2 15:04:05 2006", v, time.Local)
			if err != nil || at.Before(before) || at.After(time.Now()) {
				t.Errorf("Last crash %q (%v), want between %v and now", v, err, before)
			}
		}
	}

	if err := os.WriteFile(d.ConfigFile(), []byte(s.config(append(opts, "statefile_type flat")...)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Reload(t)
	kv, _ := parseFlat(t, dump(t, d, s.state()))
	for k, v := range map[string]string{"found.noauths": "1", "found.regex": "1", "rejects.host": "1", "auth.accepts": "1", "auth.rejects": "1",
		"children.crashes": "1", "children.max": "1", "children.bugs": "0", "children.bug_last": "0"} {
		if kv[k] != v {
			t.Errorf("flat %s: %q, want %q", k, kv[k], v)
		}
	}
	if at, _ := strconv.ParseInt(kv["children.crash_last"], 10, 64); at < before.Unix() {
		t.Errorf("children.crash_last %q, want the time of the crash", kv["children.crash_last"])
	}
}
