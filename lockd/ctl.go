package lockd

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// personalGeneration is the generation `ratelimit set` stamps on quotas
// when none is given: no ratelimit_generation is higher, so the
// configuration never replaces them.
const personalGeneration = math.MaxUint64

// maxCause bounds the cause of `smtpgatectl lock`.
const maxCause = 200

// ctlUsage is the usage reply of a command.
func ctlUsage(command string) *ipc.CtlReply {
	if c := ipc.LookupCtl(command); c != nil {
		return ctlReply(ipc.CtlUsage, "%s", c.Usage())
	}
	return ctlReply(ipc.CtlUsage, "lockd: unknown command %q", command)
}

func ctlReply(code ipc.CtlStatus, format string, a ...any) *ipc.CtlReply {
	return &ipc.CtlReply{Code: code, Text: fmt.Sprintf(format, a...)}
}

// control runs one command master forwarded. Master has checked that the
// caller may run it.
func (s *server) control(q *ipc.LockdCtl) *ipc.CtlReply {
	cfg := s.cfg.Load()
	args := q.Args
	switch q.Command {
	case "locks":
		if len(args) != 0 {
			return ctlUsage(q.Command)
		}
		return s.ctlLocks(cfg)
	case "lock":
		if len(args) < 1 {
			return ctlUsage(q.Command)
		}
		// What the workers kept is stale before smtpgatectl hears the
		// lock is made (gen.go).
		defer s.gen.bump()
		return s.ctlLock(cfg, args, q.UID)
	case "unlock":
		if len(args) != 1 {
			return ctlUsage(q.Command)
		}
		defer s.gen.bump()
		return s.ctlUnlock(cfg, args[0], q.UID)
	case "ratelimit":
		if len(args) >= 2 {
			switch args[0] {
			case "show":
				if len(args) == 2 {
					return s.ctlRateShow(cfg, args[1])
				}
			case "set":
				if len(args) >= 3 {
					return s.ctlRateSet(cfg, args[1], args[2:], q.UID)
				}
			case "reset":
				if len(args) == 2 || (len(args) == 3 && args[2] == "all") {
					return s.ctlRateReset(cfg, args[1], len(args) == 3, q.UID)
				}
			}
		}
		return ctlUsage(q.Command)
	}
	return ctlReply(ipc.CtlUsage, "lockd: unknown command %q", q.Command)
}

// ago is a duration for a person, to the second.
func ago(d time.Duration) string { return d.Round(time.Second).String() }

func (s *server) ctlLocks(cfg *config.Config) *ipc.CtlReply {
	locks, err := s.listLocks(cfg)
	if err != nil {
		return ctlReply(ipc.CtlFailed, "lock_path %s: %v", cfg.LockPath, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "lock_path %s, lock_duration %d", cfg.LockPath, cfg.LockDuration)
	if !cfg.Locking() {
		b.WriteString(" (locking is off: locks are not checked)")
	}
	b.WriteString("\n")
	if len(locks) == 0 {
		b.WriteString("no locks\n")
		return ctlReply(ipc.CtlOK, "%s", b.String())
	}
	slices.SortFunc(locks, func(a, b *lockFile) int { return a.mtime.Compare(b.mtime) })
	now := time.Now()
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tCAUSE\tAGE\tEXPIRES\tOWNER")
	for _, l := range locks {
		exp := "never"
		switch t, ok := l.expires(cfg); {
		case s.admin(l):
			exp = "never (administrator's file: protects from locking)"
		case ok && !now.Before(t):
			exp = "expired (removed at the next sweep)"
		case ok:
			exp = fmt.Sprintf("in %s (%s)", ago(t.Sub(now)), t.Format(time.DateTime))
		}
		cause := l.cause
		if cause == "" {
			cause = "-"
		}
		fmt.Fprintf(tw, "%v\t%s\t%s\t%s\t%s\n", l.client, cause, ago(now.Sub(l.mtime)), exp, ownerName(l.owner))
	}
	tw.Flush()
	return ctlReply(ipc.CtlOK, "%s", b.String())
}

// parseDuration reads the DURATION of `lock`: seconds, a Go duration
// ("90m", "2h30m"), or -1, "forever", "never" for a lock without end.
func parseDuration(s string) (d time.Duration, forever, ok bool) {
	switch s {
	case "-1", "forever", "never":
		return 0, true, true
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 || n > math.MaxInt64/int64(time.Second) {
			return 0, false, false
		}
		return time.Duration(n) * time.Second, false, true
	}
	if d, err := time.ParseDuration(s); err == nil && d >= time.Second {
		return d, false, true
	}
	return 0, false, false
}

func (s *server) ctlLock(cfg *config.Config, args []string, uid int) *ipc.CtlReply {
	c, err := parseClientArg(args[0])
	if err != nil {
		return ctlReply(ipc.CtlUsage, "lock: %v", err)
	}
	if !cfg.Locking() {
		return ctlReply(ipc.CtlFailed, "lock: locking is off (lock_duration 0): a lock would not be checked")
	}
	rest := args[1:]
	var until time.Time
	var forever, explicit bool
	now := time.Now()
	if len(rest) > 0 {
		if d, f, ok := parseDuration(rest[0]); ok {
			explicit, forever = true, f
			if !f {
				until = now.Add(d)
			}
			rest = rest[1:]
		} else if _, err := strconv.ParseInt(rest[0], 10, 64); err == nil {
			return ctlReply(ipc.CtlUsage, "lock: DURATION %q: seconds (at least 1), a duration such as 2h30m, or -1/forever", rest[0])
		}
	}
	cause := strings.Join(rest, " ")
	if cause == "" {
		cause = "manual"
	}
	if len(cause) > maxCause || strings.ContainsFunc(cause, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return ctlReply(ipc.CtlUsage, "lock: CAUSE must be one line of at most %d bytes", maxCause)
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	for _, n := range lockNames(c) {
		l, err := s.statLock(cfg, n)
		if err != nil {
			return ctlReply(ipc.CtlFailed, "lock: %v", err)
		}
		if l != nil && s.admin(l) {
			return ctlReply(ipc.CtlFailed, "lock: %v is protected: %s belongs to %s, an administrator's file", c, l.path, ownerName(l.owner))
		}
	}
	// Without DURATION the lock follows lock_duration, as the others do;
	// its file says nothing of its end.
	end := "forever"
	switch {
	case explicit && !forever:
		end = "until " + until.Format(time.DateTime)
	case !explicit && cfg.LockDuration > 0:
		end = "until " + now.Add(time.Duration(cfg.LockDuration)*time.Second).Format(time.DateTime) + " (lock_duration)"
	}
	old, err := s.statLock(cfg, c)
	if err != nil {
		return ctlReply(ipc.CtlFailed, "lock: %v", err)
	}
	content := lockContent(cause, until, forever)
	if old != nil {
		// A lock of ours: replaced, with the new cause and end.
		if err := writeAtomic(cfg.LockPath, c.fileName(), content, os.FileMode(cfg.LockPerm)&os.ModePerm); err != nil {
			return ctlReply(ipc.CtlFailed, "lock: %v", err)
		}
		s.log.Noticef("LOCK %v: %s, %s, replacing the lock for %q (smtpgatectl, uid %d)", c, cause, end, old.cause, uid)
		return ctlReply(ipc.CtlOK, "%v locked (%s), %s; it was locked for %q\n", c, cause, end, old.cause)
	}
	res, err := s.makeLock(cfg, c, cause, until, forever, now)
	if err == nil && !res.created {
		err = errors.New("the lock file appeared meanwhile; try again")
	}
	if err != nil {
		return ctlReply(ipc.CtlFailed, "lock: %v", err)
	}
	s.log.Noticef("LOCK %v: %s, %s, %s (smtpgatectl, uid %d)", c, cause, end, res.path, uid)
	return ctlReply(ipc.CtlOK, "%v locked (%s), %s\n", c, cause, end)
}

func (s *server) ctlUnlock(cfg *config.Config, arg string, uid int) *ipc.CtlReply {
	c, err := parseClientArg(arg)
	if err != nil {
		return ctlReply(ipc.CtlUsage, "unlock: %v", err)
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	l, err := s.statLock(cfg, c)
	switch {
	case err != nil:
		return ctlReply(ipc.CtlFailed, "unlock: %v", err)
	case l == nil:
		return ctlReply(ipc.CtlNotFound, "unlock: %v is not locked (no %s)", c, filepath.Join(cfg.LockPath, c.fileName()))
	case s.admin(l):
		return ctlReply(ipc.CtlFailed, "unlock: %s belongs to %s, an administrator's file: not removed (remove it yourself)", l.path, ownerName(l.owner))
	}
	if err := os.Remove(l.path); err != nil {
		return ctlReply(ipc.CtlFailed, "unlock: %v", err)
	}
	s.log.Noticef("UNLOCK %v: lock for %q removed (smtpgatectl, uid %d)", c, l.cause, uid)
	return ctlReply(ipc.CtlOK, "%v unlocked (it was locked for %q)\n", c, l.cause)
}

// showRecord is the text of `ratelimit show`.
func showRecord(cfg *config.Config, c client, r *record, note string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "client %v, file %s%s\n", c, filepath.Join(cfg.RatelimitPath, c.fileName()), note)
	if !cfg.Rating() {
		b.WriteString("rate limiting is off (ratelimit_period 0): nothing is counted or refused\n")
	}
	gen := fmt.Sprintf("generation %d", r.Generation)
	switch {
	case r.Generation == personalGeneration:
		gen += " (quotas of its own: never replaced by the configuration's)"
	case r.Generation > cfg.RatelimitGeneration:
		gen += fmt.Sprintf(" (quotas of its own until ratelimit_generation exceeds it; now %d)", cfg.RatelimitGeneration)
	default:
		gen += " (the configuration's quotas)"
	}
	fmt.Fprintf(&b, "%s\n", gen)
	start := time.Unix(r.Start, 0)
	fmt.Fprintf(&b, "period started %s", start.Format(time.DateTime))
	if cfg.Rating() {
		fmt.Fprintf(&b, ", ends %s (ratelimit_period %d)", start.Add(time.Duration(cfg.RatelimitExpiration)*time.Second).Format(time.DateTime), cfg.RatelimitExpiration)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "COUNTER\tCOUNT\tQUOTA")
	for i, n := range counterNames {
		q := strconv.FormatUint(r.Quota[i], 10)
		if r.Quota[i] == 0 {
			q = "0 (none)"
		} else if r.over(i) {
			q += " (reached)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", n, r.Count[i], q)
	}
	tw.Flush()
	return b.String()
}

func (s *server) ctlRateShow(cfg *config.Config, arg string) *ipc.CtlReply {
	c, err := parseClientArg(arg)
	if err != nil {
		return ctlReply(ipc.CtlUsage, "ratelimit show: %v", err)
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	path := filepath.Join(cfg.RatelimitPath, c.fileName())
	now := time.Now().Unix()
	r, err := readRecord(path)
	note := ""
	switch {
	case errors.Is(err, errCorrupt):
		note = fmt.Sprintf(" (%v: a new record replaces it at the next connection)", err)
		r = nil
	case err != nil:
		return ctlReply(ipc.CtlFailed, "ratelimit show: %s: %v", path, err)
	case r == nil:
		note = " (no record yet)"
	}
	if r == nil {
		r = newRecord(cfg, c, now)
	} else {
		r.refresh(cfg, now) // what the next request will see; not written
	}
	return ctlReply(ipc.CtlOK, "%s", showRecord(cfg, c, r, note))
}

func (s *server) ctlRateSet(cfg *config.Config, arg string, pairs []string, uid int) *ipc.CtlReply {
	c, err := parseClientArg(arg)
	if err != nil {
		return ctlReply(ipc.CtlUsage, "ratelimit set: %v", err)
	}
	quotas := map[int]uint64{}
	gen := uint64(personalGeneration)
	for _, p := range pairs {
		name, val, ok := strings.Cut(p, "=")
		v, verr := strconv.ParseUint(val, 10, 64)
		if !ok || verr != nil {
			return ctlReply(ipc.CtlUsage, "ratelimit set: %q: want NAME=VALUE, VALUE a number (0: no quota)", p)
		}
		if name == "generation" {
			if v <= cfg.RatelimitGeneration {
				return ctlReply(ipc.CtlUsage, "ratelimit set: generation %d is not above ratelimit_generation %d: the configuration's quotas would replace these", v, cfg.RatelimitGeneration)
			}
			gen = v
			continue
		}
		i := counterIndex(name)
		if i < 0 {
			return ctlReply(ipc.CtlUsage, "ratelimit set: unknown NAME %q; names: %s, generation", name, strings.Join(counterNames[:], ", "))
		}
		quotas[i] = v
	}
	if len(quotas) == 0 {
		return ctlReply(ipc.CtlUsage, "ratelimit set: no quota given (NAME=VALUE, NAME one of %s)", strings.Join(counterNames[:], ", "))
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	r, _, err := s.loadRecord(cfg, c, time.Now())
	if err != nil {
		return ctlReply(ipc.CtlFailed, "ratelimit set: %v", err)
	}
	var set []string
	for i, v := range quotas {
		r.Quota[i] = v
		set = append(set, fmt.Sprintf("%s=%d", counterNames[i], v))
	}
	slices.Sort(set)
	r.Generation = gen
	if err := s.storeRecord(cfg, r); err != nil {
		return ctlReply(ipc.CtlFailed, "ratelimit set: %v", err)
	}
	s.log.Noticef("RATELIMIT %v: quotas %s, generation %d (smtpgatectl, uid %d)", c, strings.Join(set, " "), gen, uid)
	return ctlReply(ipc.CtlOK, "%s", showRecord(cfg, c, r, ""))
}

func (s *server) ctlRateReset(cfg *config.Config, arg string, all bool, uid int) *ipc.CtlReply {
	c, err := parseClientArg(arg)
	if err != nil {
		return ctlReply(ipc.CtlUsage, "ratelimit reset: %v", err)
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	path := filepath.Join(cfg.RatelimitPath, c.fileName())
	if all {
		err := os.Remove(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return ctlReply(ipc.CtlNotFound, "ratelimit reset: %v has no record", c)
		case err != nil:
			return ctlReply(ipc.CtlFailed, "ratelimit reset: %v", err)
		}
		s.log.Noticef("RATELIMIT %v: record removed (smtpgatectl, uid %d)", c, uid)
		return ctlReply(ipc.CtlOK, "%v: record removed: counts from zero, the configuration's quotas\n", c)
	}
	r, err := readRecord(path)
	if r == nil && err == nil {
		return ctlReply(ipc.CtlNotFound, "ratelimit reset: %v has no record", c)
	}
	if r, _, err = s.loadRecord(cfg, c, time.Now()); err != nil {
		return ctlReply(ipc.CtlFailed, "ratelimit reset: %v", err)
	}
	r.Count, r.Start = [nCounters]uint64{}, time.Now().Unix()
	if err := s.storeRecord(cfg, r); err != nil {
		return ctlReply(ipc.CtlFailed, "ratelimit reset: %v", err)
	}
	s.log.Noticef("RATELIMIT %v: counts reset (smtpgatectl, uid %d)", c, uid)
	return ctlReply(ipc.CtlOK, "%s", showRecord(cfg, c, r, ""))
}
