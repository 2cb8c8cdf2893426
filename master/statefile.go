package master

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/version"
)

// snapshot is the daemon's status at one moment.
type snapshot struct {
	Version          string
	Pid              int
	Now              time.Time
	Started          time.Time
	Reloaded         time.Time
	Current, Max     int
	Viruses, Spam    uint64
	Requests         uint64
	Direct, Empty    uint64
	Rejects          [len(rejectKinds)]uint64
	Lost             uint64
	ClientBytes      uint64
	ServerBytes      uint64
	Closes           map[string]uint64
	Restarts         map[string]int
	Sessions         []liveRow
	SessionsIncluded bool
}

// rejectKinds are the columns of the Rejects line. Each counts the CLOSE
// causes listed in rejectCauses.
var rejectKinds = [...]string{"host", "ident", "lock", "dnsbl", "rate", "ratelimit", "other"}

var rejectCauses = map[string]int{
	"maxhost":   0,
	"maxident":  1,
	"lock":      2,
	"dnsbl":     3,
	"dnsdb":     3,
	"maxconn":   4, // too many connections or too much load
	"load":      4,
	"ratelimit": 5,
	// Other refusals: the proxy did not relay the session.
	"earlytalker": 6,
	"loop":        6,
	"lookup":      6,
	"spf":         6,
	"regex":       6,
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
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &snapshot{
		Version: version.Version, Pid: os.Getpid(), Now: time.Now(),
		Started: m.started, Reloaded: m.reloaded,
		Current: len(m.sessions), Max: m.maxConnections,
		Requests: m.count.requests, Direct: m.count.direct, Empty: m.count.empty,
		Lost: m.count.lostSessions, ClientBytes: m.ops.clientBytes, ServerBytes: m.ops.serverBytes,
		Closes: map[string]uint64{}, Restarts: map[string]int{},
		Sessions: rows, SessionsIncluded: withSessions,
	}
	for by, n := range m.ops.closes {
		s.Closes[by] = n
		if k, ok := rejectCauses[by]; ok {
			s.Rejects[k] += n
		}
	}
	s.Viruses, s.Spam = m.ops.closes["virus"], m.ops.spam
	for _, p := range m.allProcs() {
		s.Restarts[p.String()] = p.restarts
	}
	return s
}

// writeState writes the statefile (USR1, `smtp-gated -s`, `smtpgatectl
// dump`) and returns what it wrote.
func (m *master) writeState() (string, error) {
	m.ops.stateMu.Lock()
	defer m.ops.stateMu.Unlock()
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

// formatState writes the status in the formats of statefile_type: human
// (the summary for people, and the session table), flat (key: value lines,
// the sessions as slot.N.* keys), slots (the session table). Every format
// lists every live session.
func formatState(w io.Writer, t config.StatefileType, s *snapshot) {
	table := t.Has(config.StatefileHuman) || t.Has(config.StatefileSlots) || t == 0
	if t.Has(config.StatefileHuman) || t == 0 {
		humanSummary(w, s)
	}
	if table {
		humanTable(w, s)
	}
	if t.Has(config.StatefileFlat) {
		if table {
			fmt.Fprintln(w)
		}
		flat(w, s, true)
	}
}

func humanSummary(w io.Writer, s *snapshot) {
	const layout = "Mon Jan _2 15:04:05 2006"
	fmt.Fprintf(w, "Version: smtp-gated %s, pid %d\n", s.Version, s.Pid)
	fmt.Fprintf(w, "Start time: %s\n", s.Started.Format(layout))
	fmt.Fprintf(w, "Restart time: %s\n", s.Reloaded.Format(layout))
	fmt.Fprintf(w, "Uptime: %s\n", uptime(s.Now.Sub(s.Started)))
	fmt.Fprintf(w, "Children: %d/%d (current/max)\n", s.Current, s.Max)
	fmt.Fprintf(w, "Found: %d/%d (viruses/spam)\n", s.Viruses, s.Spam)
	fmt.Fprintf(w, "Requests: %d/%d/%d (total/direct/empty)\n", s.Requests, s.Direct, s.Empty)
	var r []string
	for _, n := range s.Rejects {
		r = append(r, fmt.Sprint(n))
	}
	fmt.Fprintf(w, "Rejects: %s (%s)\n", strings.Join(r, "/"), strings.Join(rejectKinds[:], "/"))
	fmt.Fprintln(w)
}

// uptime is "11d 21h 28m 22s".
func uptime(d time.Duration) string {
	sec := int64(d / time.Second)
	return fmt.Sprintf("%dd %dh %dm %ds", sec/86400, sec%86400/3600, sec%3600/60, sec%60)
}

// The session table's columns.
const tableHead = "%-4s %-7s %-8s %-8s %-5s %6s %-39s %-39s %4s %10s %10s %7s %s\n"

func humanTable(w io.Writer, s *snapshot) {
	fmt.Fprintf(w, tableHead, "slot", "pid", "id", "state", "flags", "time",
		"source", "target", "trns", "cli_rx", "srv_rx", "kbps", "ident")
	for i, r := range s.Sessions {
		target := "-"
		if r.Target.IsValid() {
			target = r.Target.String()
		}
		ident := r.Ident
		if ident == "" {
			ident = "-"
		}
		fmt.Fprintf(w, "%-4d %-7d %-8d %-8s %-5s %6d %-39s %-39s %4d %10d %10d %7.1f %s\n",
			i, r.Pid, r.ID, r.State, flags(r.Auth), int64(s.Now.Sub(r.Start)/time.Second),
			r.Src, target, r.Transaction, r.ClientRx, r.ServerRx, kbps(r, s.Now), ident)
	}
}

// flags are the session's flags: a (the MTA offers AUTH), A (the client
// authenticated); "-" for none.
func flags(auth int) string {
	f := ""
	if auth&1 != 0 {
		f += "a"
	}
	if auth&2 != 0 {
		f += "A"
	}
	if f == "" {
		f = "-"
	}
	return f
}

// kbps is the session's average speed since it started, both ways, in
// kilobits per second.
func kbps(r liveRow, now time.Time) float64 {
	secs := now.Sub(r.Start).Seconds()
	if secs <= 0 {
		return 0
	}
	return float64(r.ClientRx+r.ServerRx) * 8 / 1000 / secs
}

// flat writes the status as "key: value" lines; with sessions, a
// slot.N.* group per live session.
func flat(w io.Writer, s *snapshot, sessions bool) {
	kv := func(k string, v any) { fmt.Fprintf(w, "%s: %v\n", k, v) }
	kv("version", s.Version)
	kv("pid", s.Pid)
	kv("time.now", s.Now.Unix())
	kv("time.start", s.Started.Unix())
	kv("time.restart", s.Reloaded.Unix())
	kv("uptime", int64(s.Now.Sub(s.Started)/time.Second))
	kv("children.current", s.Current)
	kv("children.max", s.Max)
	kv("found.viruses", s.Viruses)
	kv("found.spam", s.Spam)
	kv("requests.total", s.Requests)
	kv("requests.direct", s.Direct)
	kv("requests.empty", s.Empty)
	for i, k := range rejectKinds {
		kv("rejects."+k, s.Rejects[i])
	}
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
	if !sessions {
		return
	}
	kv("slots.used", len(s.Sessions))
	for i, r := range s.Sessions {
		p := fmt.Sprintf("slot.%d.", i)
		kv(p+"pid", r.Pid)
		kv(p+"id", r.ID)
		kv(p+"state", r.State)
		kv(p+"flags", flags(r.Auth))
		kv(p+"time", int64(s.Now.Sub(r.Start)/time.Second))
		kv(p+"src.ip", r.Src.Addr())
		kv(p+"src.port", r.Src.Port())
		if r.Target.IsValid() {
			kv(p+"dst.ip", r.Target.Addr())
			kv(p+"dst.port", r.Target.Port())
		} else {
			kv(p+"dst.ip", "")
			kv(p+"dst.port", "")
		}
		kv(p+"trns", r.Transaction)
		kv(p+"cli_rx", r.ClientRx)
		kv(p+"srv_rx", r.ServerRx)
		kv(p+"kbps", fmt.Sprintf("%.1f", kbps(r, s.Now)))
		kv(p+"ident", r.Ident)
	}
}
