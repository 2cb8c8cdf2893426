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
	pid, id                int
	state, flags, src, dst string
	trns                   int
	cliRx, srvRx           int64
}

var tableHead = regexp.MustCompile(`(?m)^slot\s+pid\s+id\s+state\s+flags\s+time\s+source\s+target\s+trns\s+cli_rx\s+srv_rx\s+kbps\s+ident$`)

// parseTable reads the session table of a human or slots status file.
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
		if f[0] != strconv.Itoa(len(rows)) {
			t.Errorf("row %q: slot %s, want %d", line, f[0], len(rows))
		}
		r := tableRow{state: f[3], flags: f[4], src: f[6], dst: f[7]}
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

// parseFlat reads the key: value lines of a flat status file.
func parseFlat(t *testing.T, text string) (map[string]string, map[string]tableRow) {
	t.Helper()
	kv := map[string]string{}
	for line := range strings.SplitSeq(text, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && !strings.Contains(k, " ") {
			kv[k] = v
		}
	}
	n, err := strconv.Atoi(kv["slots.used"])
	if err != nil {
		t.Fatalf("flat status without slots.used:\n%s", text)
	}
	rows := map[string]tableRow{}
	for i := range n {
		p := fmt.Sprintf("slot.%d.", i)
		r := tableRow{state: kv[p+"state"], flags: kv[p+"flags"],
			src: kv[p+"src.ip"] + ":" + kv[p+"src.port"], dst: kv[p+"dst.ip"] + ":" + kv[p+"dst.port"]}
		r.pid, _ = strconv.Atoi(kv[p+"pid"])
		r.id, _ = strconv.Atoi(kv[p+"id"])
		r.trns, _ = strconv.Atoi(kv[p+"trns"])
		r.cliRx, _ = strconv.ParseInt(kv[p+"cli_rx"], 10, 64)
		r.srvRx, _ = strconv.ParseInt(kv[p+"srv_rx"], 10, 64)
		rows[r.src] = r
	}
	if _, ok := kv[fmt.Sprintf("slot.%d.pid", n)]; ok {
		t.Errorf("slot.%d.* present beyond slots.used %d", n, n)
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

// SIGUSR1 with 10 sessions open on 2 workers: the status file lists
// exactly those sessions, with their state, in each statefile_type, and
// `smtp-gated -s` from another process prints it.
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

	// The default, human,slots. The client in DATA may still be reading:
	// wait until its bytes are counted.
	var text string
	var rows map[string]tableRow
	for deadline := time.Now().Add(10 * time.Second); ; {
		text = dump(t, d, s.state())
		rows = parseTable(t, text)
		if r := rows[order[1]]; r.state == "data" || time.Now().After(deadline) {
			break
		}
	}
	sameSources(t, "human,slots", rows, live)
	for _, head := range []string{"Version: ", "Start time: ", "Restart time: ", "Uptime: ", "Children: 10/64 (current/max)",
		"Found: 0/0 (viruses/spam)", "Requests: 10/0/0 (total/direct/empty)", "Rejects: 0/0/0/0/0/0/0 (host/ident/lock/dnsbl/rate/ratelimit/other)"} {
		if !strings.Contains(text, "\n"+head) && !strings.HasPrefix(text, head) {
			t.Errorf("no %q line in:\n%s", head, text)
		}
	}
	used := map[int]bool{}
	for src, r := range rows {
		used[r.pid] = true
		if r.dst != s.pf.Addr {
			t.Errorf("%s: target %s, want %s", src, r.dst, s.pf.Addr)
		}
		if r.cliRx == 0 || r.srvRx == 0 {
			t.Errorf("%s: cli_rx %d srv_rx %d, want both counted", src, r.cliRx, r.srvRx)
		}
		if r.id < 1 || r.id > 10 {
			t.Errorf("%s: id %d, want 1..10", src, r.id)
		}
		if r.flags != "a" && r.flags != "-" {
			t.Errorf("%s: flags %q", src, r.flags)
		}
	}
	if r := rows[order[0]]; r.trns != 1 || r.state != "helo" {
		t.Errorf("session after MAIL FROM: trns %d state %s, want 1 helo", r.trns, r.state)
	}
	if r := rows[order[1]]; r.state != "data" || r.trns != 1 {
		t.Errorf("session in DATA: state %s trns %d, want data 1", r.state, r.trns)
	}
	if r := rows[order[2]]; r.state != "helo" || r.trns != 0 {
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

	// Three end: the next dump lists the seven left.
	for _, src := range order[7:] {
		m := d.Mark()
		clients[src].Quit()
		d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=quit, .*src=`+regexp.QuoteMeta(src)), 10*time.Second)
		delete(live, src)
	}
	sameSources(t, "after 3 QUITs", parseTable(t, dump(t, d, s.state())), live)

	formats := []struct {
		typ          string
		human, table bool
		flat         bool
	}{
		{"flat", false, false, true},
		{"slots", false, true, false},
		{"human", true, true, false},
		{"human,flat,slots", true, true, true},
	}
	for _, f := range formats {
		if err := os.WriteFile(d.ConfigFile(), []byte(s.config("statefile_perm 0640", "statefile_type "+f.typ)), 0o644); err != nil {
			t.Fatal(err)
		}
		d.Reload(t)
		text := dump(t, d, s.state())
		if got := strings.Contains(text, "\nUptime: "); got != f.human {
			t.Errorf("%s: human summary present %v, want %v:\n%s", f.typ, got, f.human, text)
		}
		if f.table {
			sameSources(t, f.typ+" (table)", parseTable(t, text), live)
		} else if tableHead.MatchString(text) {
			t.Errorf("%s: a session table:\n%s", f.typ, text)
		}
		if f.flat {
			kv, rows := parseFlat(t, text)
			sameSources(t, f.typ+" (flat)", rows, live)
			if kv["requests.total"] != "10" || kv["children.current"] != "7" || kv["closed.quit"] != "3" {
				t.Errorf("%s: requests.total %q children.current %q closed.quit %q, want 10 7 3",
					f.typ, kv["requests.total"], kv["children.current"], kv["closed.quit"])
			}
			if rows[order[1]].state != "data" {
				t.Errorf("%s: the session in DATA has state %q", f.typ, rows[order[1]].state)
			}
		} else if strings.Contains(text, "slots.used: ") {
			t.Errorf("%s: flat keys in:\n%s", f.typ, text)
		}
	}

	// smtp-gated -s from another process writes and prints the file;
	// -S names it.
	r := run(t, nil, harness.DaemonBinary(t), "-s", d.ConfigFile())
	if r.code != 0 {
		t.Fatalf("smtp-gated -s: %v", r)
	}
	file, _ := os.ReadFile(s.state())
	if r.stdout != string(file) {
		t.Errorf("smtp-gated -s printed\n%s\nthe statefile holds\n%s", r.stdout, file)
	}
	sameSources(t, "smtp-gated -s", parseTable(t, r.stdout), live)
	_, flatRows := parseFlat(t, r.stdout)
	sameSources(t, "smtp-gated -s (flat)", flatRows, live)
	if r := run(t, nil, harness.DaemonBinary(t), "-S", d.ConfigFile()); r.code != 0 || r.stdout != s.state()+"\n" {
		t.Errorf("smtp-gated -S: %v, want %s", r, s.state())
	}

	for src := range live {
		clients[src].Close()
	}
}
