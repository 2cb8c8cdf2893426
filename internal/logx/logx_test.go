package logx

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// With standard error the journal, a foreground logger does not use
// syslog (the journal would get every line twice) and marks each line
// with its level instead of a time stamp.
func TestJournal(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv(EnvSystemd, "")
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	l, _ := New("smtp-gated", 3, Info, true, true)
	if l.out.sys != nil || !l.out.prio || l.out.stamp {
		t.Fatalf("under the journal: syslog %v, prio %v, stamp %v; want no syslog, prio, no stamp", l.out.sys != nil, l.out.prio, l.out.stamp)
	}
	var b strings.Builder
	l.out.stderr = &b
	l.With("master: ").Warningf("two\nlines")
	l.Debugf("not at level info")
	if got, want := b.String(), fmt.Sprintf("<4>smtp-gated[%d]: warning: master: two\\x0alines\n", syscall.Getpid()); got != want {
		t.Errorf("got %q, want %q", got, want)
	}

	// JOURNAL_STREAM naming another file (a shell redirected stderr):
	// not the journal.
	t.Setenv("JOURNAL_STREAM", "1:1")
	if journalStderr() || UnderSystemd(true) {
		t.Errorf("JOURNAL_STREAM of another file taken for standard error")
	}
	// Foreground under systemd without the journal: no stamps, syslog kept.
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	if !UnderSystemd(true) || UnderSystemd(false) {
		t.Errorf("UnderSystemd with NOTIFY_SOCKET: foreground %v, background %v; want true, false", UnderSystemd(true), UnderSystemd(false))
	}
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv(EnvSystemd, "1")
	if !UnderSystemd(true) {
		t.Errorf("a child told by master (%s=1) does not know it runs under systemd", EnvSystemd)
	}
}

// The lines of 1.4's LOG_ALWAYS are written at notice whatever the level;
// they and the event lines start with their tag, without the process's
// prefix; event lines obey the level.
func TestAlwaysAndEvents(t *testing.T) {
	var b strings.Builder
	root := To(&b, Warning)
	l := root.With("session 0: ")
	l.Alwaysf("CLOSE by=%s, src=%s", "quit", "192.0.2.1\nX")
	l.Eventf(Notice, "SPAM:FOUND score=%.3f", 9.5)
	l.Eventf(Warning, "SCAN:VIRUS virus=%s", "Eicar")
	l.Noticef("not at level warning")
	want := "notice: CLOSE by=quit, src=192.0.2.1\\x0aX\nwarning: SCAN:VIRUS virus=Eicar\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
	b.Reset()
	root.SetLevel(Err)
	l.Alwaysf("NEW (1/1)")
	if b.String() != "notice: NEW (1/1)\n" {
		t.Errorf("at log_level err: %q", b.String())
	}
}

// A held logger's lines reach standard error with Release, all in one
// write, in order; until then nothing is written.
func TestHeldOneWrite(t *testing.T) {
	var w writes
	l := To(&w, Debug).With("p: ")
	h := l.Held()
	h.Infof("one")
	h.Eventf(Notice, "TWO")
	h.Debugf("three")
	if len(w) != 0 {
		t.Fatalf("written before Release: %q", w)
	}
	h.Release()
	want := []string{"info: p: one\nnotice: TWO\ndebug: p: three\n"}
	if !slices.Equal(w, want) {
		t.Errorf("got writes %q, want %q", w, want)
	}
	h.Release()
	l.Infof("after")
	if len(w) != 2 || w[1] != "info: p: after\n" {
		t.Errorf("got writes %q, want the held lines once, then the line of l", w)
	}
}

// writes records each write.
type writes []string

func (w *writes) Write(b []byte) (int, error) {
	*w = append(*w, string(b))
	return len(b), nil
}
