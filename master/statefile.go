package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/version"
)

// snapshot is the daemon's status at one moment.
type snapshot struct {
	Version     string
	BuildDate   string
	Pid         int
	Now         time.Time
	Started     time.Time
	Reloaded    time.Time
	Resource    string // the Resource: line's values, or why there are none
	Current     int
	Peak        int // the most sessions open at once since start
	Limit       int // max_connections
	Crashes     uint64
	CrashLast   time.Time
	Bugs        uint64
	BugLast     time.Time
	Viruses     uint64
	Spam        uint64
	NoAuth      uint64
	SPF         uint64
	Regex       uint64
	Earlytalk   uint64
	Requests    uint64
	Direct      uint64
	Empty       uint64
	Rejects     [len(rejectKinds)]uint64
	Pipeline    uint64
	AuthOK      uint64
	AuthFail    uint64
	Lost        uint64
	ClientBytes uint64
	ServerBytes uint64
	Closes      map[string]uint64
	Restarts    map[string]int
	Sessions    []liveRow
}

// rejectKinds are the columns of the Rejects line, as 1.4 had them.
// Each counts the CLOSE causes listed in rejectCauses; ratelimit counts
// the sessions in which a command was refused by a rate limit.
var rejectKinds = [...]string{"host", "ident", "lock", "dnsbl", "rate", "ratelimit", "other"}

const rejectRatelimit = 5

var rejectCauses = map[string]int{
	"maxhost":   0,
	"maxident":  1,
	"lock":      2,
	"dnsbl":     3,
	"ratelimit": 4, // the rate of connections
	// Refused by master: max_connections, max_load, no worker.
	"maxconn":     6,
	"load":        6,
	"unavailable": 6,
	"shutdown":    6,
	"handoff":     6,
}

// snap takes the counters, and the live sessions when withSessions.
func (m *master) snap(withSessions bool) *snapshot {
	var rows []liveRow
	if withSessions {
		rows = m.liveSessions()
	}
	s := &snapshot{
		Version: version.Version, BuildDate: version.BuildDate(), Pid: os.Getpid(), Now: time.Now(),
		Started: m.started, Reloaded: time.Unix(0, m.reloaded.Load()), Resource: resourceUsage(),
		Closes: map[string]uint64{}, Restarts: map[string]int{},
		Sessions: rows,
	}
	m.adm.fill(s)
	m.sup.fill(s)
	return s
}

// fill puts admission's counters in s.
func (a *admission) fill(s *snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := &a.count
	s.Current, s.Peak, s.Limit = len(a.sessions), c.peak, a.maxConnections
	s.NoAuth, s.SPF, s.Regex, s.Earlytalk = c.noAuth, c.spf, c.regex, c.earlytalk
	s.Requests, s.Direct, s.Empty = c.requests, c.direct, c.empty
	s.Pipeline, s.AuthOK, s.AuthFail = c.pipeline, c.authOK, c.authFail
	s.Lost, s.ClientBytes, s.ServerBytes = c.lostSessions, a.ops.clientBytes, a.ops.serverBytes
	for by, n := range a.ops.closes {
		s.Closes[by] = n
		if k, ok := rejectCauses[by]; ok {
			s.Rejects[k] += n
		}
	}
	s.Rejects[rejectRatelimit] += c.rateRefused
	s.Viruses, s.Spam = a.ops.closes["virus"], a.ops.spam
}

// fill puts the supervisor's counters in s: crashes, breaches, restarts.
func (s *supervisor) fill(snap *snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap.Crashes, snap.CrashLast, snap.Bugs, snap.BugLast = s.crashes, s.crashLast, s.bugs, s.bugLast
	for _, p := range s.allProcs() {
		snap.Restarts[p.String()] = p.restarts
	}
}

// resourceUsage is master's getrusage as 1.4's Resource line shows it:
// "maxrss/ixrss/idrss/isrss".
func resourceUsage() string {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return "getrusage() error: " + err.Error()
	}
	return fmt.Sprintf("%d/%d/%d/%d", ru.Maxrss, ru.Ixrss, ru.Idrss, ru.Isrss)
}

// writeState writes the statefile (USR1, `smtp-gated -s`, `smtpgatectl
// dump`) and returns what it wrote.
func (m *master) writeState() (string, error) {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	cfg := m.cfg.Load()
	if cfg.Statefile == "" {
		return "", errors.New("statefile is not set")
	}
	var b strings.Builder
	formatState(&b, cfg.StatefileType, m.snap(true))
	if err := writeAtomic(cfg.HostPath(cfg.Statefile), []byte(b.String()), os.FileMode(cfg.StatefilePerm&0o7777)); err != nil {
		return "", fmt.Errorf("statefile: %w", err)
	}
	return b.String(), nil
}

// writeAtomic replaces path with data: a temporary file beside it with
// mode perm, then a rename, so a reader sees the old file or the new one,
// never a part.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	os.Remove(tmp) // a leftover, or something planted: never written through
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // the umask does not decide statefile_perm
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// formatState writes the status file in 1.4's layouts. statefile_type
// flat gives key: value lines, otherwise the human layout is written;
// slots adds the live sessions to either.
func formatState(w io.Writer, t config.StatefileType, s *snapshot) {
	slots := t.Has(config.StatefileSlots)
	if t.Has(config.StatefileFlat) {
		flat(w, s, slots)
		return
	}
	human(w, s, slots)
}

// timeLayout is C's strftime %c in the C locale.
const timeLayout = "Mon Jan _2 15:04:05 2006"

// stamp is t as 1.4 wrote times; the zero time is the epoch.
func stamp(t time.Time) string {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	return t.Format(timeLayout)
}

// unixTime is t in Unix seconds, 0 for the zero time.
func unixTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// resourceLine is the Resource line of both layouts.
func resourceLine(w io.Writer, s *snapshot) {
	if strings.HasPrefix(s.Resource, "getrusage") {
		fmt.Fprintf(w, "# Resource: %s\n", s.Resource)
		return
	}
	fmt.Fprintf(w, "Resource: %s (maxrss/ixrss/idrss/isrss)\n", s.Resource)
}

// human is 1.4's human layout: the counters, a blank line and the
// session table's header, and with slots a row per live session.
func human(w io.Writer, s *snapshot, slots bool) {
	fmt.Fprintf(w, "Version:      %s\n", s.Version)
	fmt.Fprintf(w, "Compile date: %s\n", s.BuildDate)
	fmt.Fprintf(w, "Dump time:    %s\n", stamp(s.Now))
	fmt.Fprintf(w, "Start time:   %s\n", stamp(s.Started))
	fmt.Fprintf(w, "Restart time: %s\n", stamp(s.Reloaded))
	fmt.Fprintf(w, "Last crash:   %s\n", stamp(s.CrashLast))
	fmt.Fprintf(w, "Last BUG:     %s\n", stamp(s.BugLast))
	fmt.Fprintf(w, "Uptime:   %s\n", uptime(s.Now.Sub(s.Started)))
	resourceLine(w, s)
	fmt.Fprintf(w, "Children: %d/%d/%d/%d (current/max/crashed/bugs)\n", s.Current, s.Peak, s.Crashes, s.Bugs)
	// Five numbers under six names, as 1.4 wrote it: earlytalk is in
	// the flat layout only.
	fmt.Fprintf(w, "Found:    %d/%d/%d/%d/%d (viruses/spam/no-auth/spf/regex/earlytalk)\n",
		s.Viruses, s.Spam, s.NoAuth, s.SPF, s.Regex)
	fmt.Fprintf(w, "Requests: %d/%d/%d (total/direct/empty)\n", s.Requests, s.Direct, s.Empty)
	var r []string
	for _, n := range s.Rejects {
		r = append(r, fmt.Sprint(n))
	}
	fmt.Fprintf(w, "Rejects:  %s (%s)\n", strings.Join(r, "/"), strings.Join(rejectKinds[:], "/"))
	fmt.Fprintf(w, "Errors:   %d (pipeline)\n", s.Pipeline)
	fmt.Fprintf(w, "Auth:     %d/%d (accepted/rejected)\n", s.AuthOK, s.AuthFail)
	fmt.Fprintf(w, "\n%s\n", slotHead)
	if !slots {
		return
	}
	for _, r := range s.Sessions {
		secs := int64(s.Now.Sub(r.Start) / time.Second)
		target := "0.0.0.0"
		if r.Target.IsValid() {
			target = r.Target.Addr().String()
		}
		fmt.Fprintf(w, "%6d %-5d %-8s %-5s %02d:%02d %-15s %-15s %4d %8d %8d %7.1f %s\n",
			r.Slot, r.Pid, r.State, flag(r.Auth), secs/60, secs%60, r.Src.Addr(), target,
			r.Transaction, r.ClientRx, r.ServerRx, kbps(r, secs), r.Ident)
	}
}

// slotHead is the header of the human layout's session table.
const slotHead = "  slot pid   state    flags time  source          target          trns   cli_rx   srv_rx    kbps ident"

// uptime is "11d 21h 28m 22s".
func uptime(d time.Duration) string {
	sec := int64(d / time.Second)
	return fmt.Sprintf("%dd %dh %dm %ds", sec/86400, sec%86400/3600, sec%3600/60, sec%60)
}

// flag is a session's flag in 1.4's table: A the client authenticated,
// a the MTA offers AUTH, "." neither.
func flag(auth int) string {
	switch {
	case auth&2 != 0:
		return "A"
	case auth&1 != 0:
		return "a"
	}
	return "."
}

// kbps is 1.4's speed of a session secs old: kilobits (of 1024 bits)
// per second received from the client; 0 in its first second.
func kbps(r liveRow, secs int64) float64 {
	if secs <= 0 {
		return 0
	}
	return float64(r.ClientRx) * 8 / 1024 / float64(secs)
}

// flat is 1.4's flat layout: "key: value" lines, 1.4's keys first, then
// those of this version; with slots, a slot.N.* group per live session,
// N its slot number.
func flat(w io.Writer, s *snapshot, slots bool) {
	kv := func(k string, v any) { fmt.Fprintf(w, "%s: %v\n", k, v) }
	kv("version", s.Version)
	kv("time.dump.unix", unixTime(s.Now))
	kv("time.dump.string", stamp(s.Now))
	kv("time.start.unix", unixTime(s.Started))
	kv("time.start.string", stamp(s.Started))
	kv("time.restart.unix", unixTime(s.Reloaded))
	kv("time.restart.string", stamp(s.Reloaded))
	kv("uptime.ticks", int64(s.Now.Sub(s.Started)/time.Second))
	kv("uptime.string", uptime(s.Now.Sub(s.Started)))
	resourceLine(w, s)
	kv("children.current", s.Current)
	kv("children.max", s.Peak)
	kv("children.crashes", s.Crashes)
	kv("children.crash_last", unixTime(s.CrashLast))
	kv("children.bugs", s.Bugs)
	kv("children.bug_last", unixTime(s.BugLast))
	kv("found.viruses", s.Viruses)
	kv("found.spams", s.Spam)
	kv("found.noauths", s.NoAuth)
	kv("found.spf", s.SPF)
	kv("found.regex", s.Regex)
	kv("found.earlytalk", s.Earlytalk)
	kv("requests.total", s.Requests)
	kv("requests.direct", s.Direct)
	kv("requests.empty", s.Empty)
	for i, k := range rejectKinds {
		kv("rejects."+k, s.Rejects[i])
	}
	kv("errors.pipeline", s.Pipeline)
	kv("auth.accepts", s.AuthOK)
	kv("auth.rejects", s.AuthFail)

	// This version's own.
	kv("pid", s.Pid)
	kv("children.limit", s.Limit)
	kv("sessions.lost", s.Lost)
	kv("bytes.client", s.ClientBytes)
	kv("bytes.server", s.ServerBytes)
	var causes []string
	for by := range s.Closes {
		causes = append(causes, by)
	}
	sort.Strings(causes)
	for _, by := range causes {
		kv("closed."+by, s.Closes[by])
	}
	if !slots {
		return
	}
	kv("slots.used", len(s.Sessions))
	for _, r := range s.Sessions {
		p := fmt.Sprintf("slot.%d.", r.Slot)
		kv(p+"pid", r.Pid)
		kv(p+"start.unix", r.Start.Unix())
		kv(p+"start.string", stamp(r.Start))
		kv(p+"state", r.State)
		kv(p+"src.ip", r.Src.Addr())
		kv(p+"flags", flag(r.Auth))
		secs := int64(s.Now.Sub(r.Start) / time.Second)
		kv(p+"id", r.ID)
		kv(p+"src.port", r.Src.Port())
		if r.Target.IsValid() {
			kv(p+"dst.ip", r.Target.Addr())
			kv(p+"dst.port", r.Target.Port())
		} else {
			kv(p+"dst.ip", "")
			kv(p+"dst.port", "")
		}
		kv(p+"time", secs)
		kv(p+"trns", r.Transaction)
		kv(p+"cli_rx", r.ClientRx)
		kv(p+"srv_rx", r.ServerRx)
		kv(p+"kbps", fmt.Sprintf("%.1f", kbps(r, secs)))
		kv(p+"ident", r.Ident)
	}
}

// The table of `smtpgatectl sessions`.
const tableHead = "%-4s %-7s %-8s %-8s %-5s %6s %-39s %-39s %4s %10s %10s %7s %s\n"

// sessionTable is `smtpgatectl sessions`: a row per live session, with
// its id (for `smtpgatectl kill`) and full addresses.
func sessionTable(w io.Writer, s *snapshot) {
	fmt.Fprintf(w, tableHead, "slot", "pid", "id", "state", "flags", "time",
		"source", "target", "trns", "cli_rx", "srv_rx", "kbps", "ident")
	for _, r := range s.Sessions {
		target := "-"
		if r.Target.IsValid() {
			target = r.Target.String()
		}
		ident := r.Ident
		if ident == "" {
			ident = "-"
		}
		secs := int64(s.Now.Sub(r.Start) / time.Second)
		fmt.Fprintf(w, "%-4d %-7d %-8d %-8s %-5s %6d %-39s %-39s %4d %10d %10d %7.1f %s\n",
			r.Slot, r.Pid, r.ID, r.State, flag(r.Auth), secs,
			r.Src, target, r.Transaction, r.ClientRx, r.ServerRx, kbps(r, secs), ident)
	}
}

// statsLine is 1.4's summary line at stop: uptime, the peak of sessions,
// crashes and bugs (count@time), found viruses/spam/no-auth/spf, requests
// and rejects (host/ident/lock/dnsbl/regex/rate/ratelimit/other).
func statsLine(s *snapshot) string {
	sec := int64(s.Now.Sub(s.Started) / time.Second)
	r := s.Rejects
	return fmt.Sprintf("uptime=%dd%dh%dm%ds maxchildren=%d crash=%d@%d bugs=%d@%d found=%d/%d/%d/%d "+
		"requests=%d/%d/%d rejects=%d/%d/%d/%d/%d/%d/%d/%d",
		sec/86400, sec%86400/3600, sec%3600/60, sec%60, s.Peak,
		s.Crashes, unixTime(s.CrashLast), s.Bugs, unixTime(s.BugLast),
		s.Viruses, s.Spam, s.NoAuth, s.SPF, s.Requests, s.Direct, s.Empty,
		r[0], r[1], r[2], r[3], s.Regex, r[4], r[5], r[6])
}
