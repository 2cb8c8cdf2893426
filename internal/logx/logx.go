// Package logx writes smtp-gated's log: one line per event, to syslog and,
// in the foreground, to standard error. Every line is written with a single
// write, so lines of several processes sharing a descriptor never mix.
package logx

import (
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Levels, with syslog's numbers.
const (
	Emerg   = 0
	Alert   = 1
	Crit    = 2
	Err     = 3
	Warning = 4
	Notice  = 5
	Info    = 6
	Debug   = 7
)

var levelNames = [...]string{"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}

// Logger is safe for concurrent use.
type Logger struct {
	out    *output
	prefix string
	held   *[]byte // lines for standard error that wait for Release (Held)
}

// output is what loggers derived by With share.
type output struct {
	tag    string
	head   string // "tag[pid]: ", made once: getpid is a system call
	level  atomic.Int32
	mu     sync.Mutex
	sys    *syslog.Writer
	stderr io.Writer
	stamp  bool
	// prio puts "<N>" (the level) before each line on standard error:
	// journald reads it as the line's priority.
	prio bool
}

// EnvSystemd is set by master for its children when it runs under
// systemd (NOTIFY_SOCKET was set), which their environment no longer says.
const EnvSystemd = "SMTPGATED_SYSTEMD"

// UnderSystemd reports whether lines on standard error are read by
// systemd, which time-stamps them itself: standard error is the journal
// (JOURNAL_STREAM names it), or the process logs to standard error (the
// foreground) and was started by systemd (NOTIFY_SOCKET, or EnvSystemd
// in a child).
func UnderSystemd(toStderr bool) bool {
	return journalStderr() || (toStderr && (os.Getenv("NOTIFY_SOCKET") != "" || os.Getenv(EnvSystemd) == "1"))
}

// journalStderr reports whether descriptor 2 is the journal stream that
// JOURNAL_STREAM ("device:inode") names: a shell in between may have
// redirected it elsewhere.
func journalStderr() bool {
	js := os.Getenv("JOURNAL_STREAM")
	if js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		return false
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino) == js
}

// New makes a logger for one process. facility is the syslog facility
// number (daemon = 3); level the highest level written. With useSyslog the
// connection to the system log is opened now, before any chroot. With
// toStderr every line also goes to standard error, time-stamped unless
// systemd reads it (UnderSystemd), which stamps lines itself. When syslog
// cannot be reached, lines go to standard error and the error is returned
// for the caller to report.
//
// When standard error is the journal and toStderr is set, syslog is not
// used: under systemd /dev/log is the journal too, and every line would
// be there twice. The lines then start with "<N>", the level, which
// journald keeps as their priority (and passes on to a syslog daemon that
// reads the journal); the facility is the unit's SyslogFacility=.
func New(tag string, facility, level int, useSyslog, toStderr bool) (*Logger, error) {
	o := &output{tag: tag}
	if tag != "" {
		o.head = fmt.Sprintf("%s[%d]: ", tag, os.Getpid())
	}
	o.level.Store(int32(level))
	var err error
	if toStderr && journalStderr() {
		useSyslog = false
		o.prio = true
	}
	if useSyslog {
		o.sys, err = syslog.Dial("", "", syslog.Priority(facility<<3)|syslog.LOG_INFO, tag)
		if err != nil {
			o.sys = nil
			err = fmt.Errorf("syslog: %w", err)
		}
	}
	if toStderr || o.sys == nil {
		o.stderr = os.Stderr
		o.stamp = !UnderSystemd(toStderr)
	}
	return &Logger{out: o}, err
}

// Discard is a logger that writes nothing (for tests).
func Discard() *Logger { return To(io.Discard, Debug) }

// To makes a logger that writes lines to w, without syslog (for tests).
func To(w io.Writer, level int) *Logger {
	o := &output{stderr: w}
	o.level.Store(int32(level))
	return &Logger{out: o}
}

// With returns a logger that puts prefix before every message; it shares
// the destination and level with l.
func (l *Logger) With(prefix string) *Logger {
	return &Logger{out: l.out, prefix: l.prefix + prefix}
}

// Held returns a logger that writes like l, except that its lines for
// standard error wait until Release, which writes them all at once: one
// write for the lines one step of a session makes together (still
// whole lines, and never mixed with another process's). Lines for syslog
// go at once, one message each. For one goroutine.
func (l *Logger) Held() *Logger {
	return &Logger{out: l.out, prefix: l.prefix, held: new([]byte)}
}

// Release writes the lines a Held logger holds.
func (l *Logger) Release() {
	if l.held == nil || len(*l.held) == 0 {
		return
	}
	o := l.out
	o.mu.Lock()
	o.stderr.Write(*l.held)
	o.mu.Unlock()
	*l.held = (*l.held)[:0]
}

// SetLevel changes the highest level written, for l and every logger
// derived from the same New.
func (l *Logger) SetLevel(level int) { l.out.level.Store(int32(level)) }

// Enabled reports whether lines of level are written.
func (l *Logger) Enabled(level int) bool { return int32(level) <= l.out.level.Load() }

func (l *Logger) logf(level int, format string, a ...any) {
	if !l.Enabled(level) {
		return
	}
	l.write(level, l.prefix+fmt.Sprintf(format, a...))
}

// Alwaysf writes one of the lines 1.4 wrote whatever log_level said
// (its LOG_ALWAYS: NEW, CLOSE, the MAIL FROM and RCPT TO addresses, HELO),
// at notice. Like Eventf, the line starts with its tag.
func (l *Logger) Alwaysf(format string, a ...any) {
	l.write(Notice, fmt.Sprintf(format, a...))
}

// Eventf writes an event line of 1.4's ("SCAN:VIRUS size=...", "SESSION
// TAKEOVER: ..."), if level is enabled. The line starts with its tag,
// without the process's prefix, so that the log watchers of 1.4 read it.
func (l *Logger) Eventf(level int, format string, a ...any) {
	if !l.Enabled(level) {
		return
	}
	l.write(level, fmt.Sprintf(format, a...))
}

func (l *Logger) write(level int, msg string) {
	o := l.out
	// One call is one line, whatever the arguments hold (Escape).
	msg = Escape(strings.TrimRight(msg, "\n"))
	if o.sys != nil {
		switch level {
		case Emerg:
			o.sys.Emerg(msg)
		case Alert:
			o.sys.Alert(msg)
		case Crit:
			o.sys.Crit(msg)
		case Err:
			o.sys.Err(msg)
		case Warning:
			o.sys.Warning(msg)
		case Notice:
			o.sys.Notice(msg)
		case Info:
			o.sys.Info(msg)
		default:
			o.sys.Debug(msg)
		}
	}
	if o.stderr != nil {
		var b strings.Builder
		if o.prio {
			fmt.Fprintf(&b, "<%d>", level)
		}
		if o.stamp {
			b.WriteString(time.Now().Format("2006-01-02T15:04:05.000 "))
		}
		b.WriteString(o.head)
		b.WriteString(levelNames[level])
		b.WriteString(": ")
		b.WriteString(msg)
		b.WriteByte('\n')
		if l.held != nil {
			*l.held = append(*l.held, b.String()...)
			return
		}
		o.mu.Lock()
		io.WriteString(o.stderr, b.String())
		o.mu.Unlock()
	}
}

func (l *Logger) Debugf(format string, a ...any)   { l.logf(Debug, format, a...) }
func (l *Logger) Infof(format string, a ...any)    { l.logf(Info, format, a...) }
func (l *Logger) Noticef(format string, a ...any)  { l.logf(Notice, format, a...) }
func (l *Logger) Warningf(format string, a ...any) { l.logf(Warning, format, a...) }
func (l *Logger) Errf(format string, a ...any)     { l.logf(Err, format, a...) }
func (l *Logger) Critf(format string, a ...any)    { l.logf(Crit, format, a...) }
