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

// limits reads /proc/PID/limits: the soft limit of each resource by name.
func limits(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^(Max [a-z ]+?)\s{2,}(\S+)\s+(\S+)`)
	l := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		l[m[1]] = m[2]
	}
	return l
}

// nices returns the nice value of every thread of pid.
func nices(t *testing.T, pid int) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		n[e.Name()] = f[16] // field 19 of stat(5), the third after ")" being field 3
	}
	return n
}

// limit_* and priority are applied in master and every child, to every
// thread; the daemon serves under them.
func TestResourceLimits(t *testing.T) {
	needRoot(t)
	s := newSetup(t)
	d := s.start(t, "limit_core_size 12345678", "limit_fsize 50m", "limit_data_size 2g",
		"limit_virt_size 16g", "priority 5")
	want := map[string]string{
		"Max core file size": "12345678",
		"Max file size":      "52436992", // 50m + 8192, as 1.4 set it
		"Max data size":      "2147483648",
		"Max address space":  "17179869184",
	}
	pids := allPids(t, d)
	// Sessions on both workers, so that they run more threads.
	a, b := greeted(t, s.addr()), greeted(t, s.addr())
	for _, pid := range pids {
		l := limits(t, pid)
		for k, v := range want {
			if l[k] != v {
				t.Errorf("pid %d (%s): %s %s, want %s", pid, cmdline(pid), k, l[k], v)
			}
		}
		ns := nices(t, pid)
		if len(ns) < 2 {
			t.Errorf("pid %d: %d threads", pid, len(ns))
		}
		for tid, n := range ns {
			if n != "5" {
				t.Errorf("pid %d (%s) thread %s: nice %s, want priority 5", pid, cmdline(pid), tid, n)
			}
		}
	}
	token := harness.Token(t)
	a.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	a.Quit()
	b.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
}

// The manual's defaults for limit_virt_size and limit_data_size (64M)
// would stop a Go program: they are left out, noted without a warning when
// the administrator did not set them and with one when he did, and -1
// leaves a limit alone.
func TestResourceLimitsBelowFloor(t *testing.T) {
	needRoot(t)
	s := newSetup(t)
	d := s.start(t, "limit_fsize -1", "limit_data_size 100M")
	d.WaitLog(t, regexp.MustCompile(`info: master: limit_virt_size 67108864: not applied to the daemon`), time.Second)
	d.WaitLog(t, regexp.MustCompile(`warning: master: limit_data_size 104857600: not applied to the daemon`), time.Second)
	self := limits(t, os.Getpid())
	for _, pid := range allPids(t, d) {
		l := limits(t, pid)
		for _, k := range []string{"Max address space", "Max data size", "Max file size"} {
			if l[k] != self[k] {
				t.Errorf("pid %d (%s): %s %s, want the inherited %s", pid, cmdline(pid), k, l[k], self[k])
			}
		}
		if l["Max core file size"] != "67108864" {
			t.Errorf("pid %d: core %s, want the default 64M", pid, l["Max core file size"])
		}
	}
	c := greeted(t, s.addr())
	c.Quit()
}

// Under systemd, with standard error the journal (JOURNAL_STREAM names
// it), lines carry their level as "<N>" and no time stamp.
func TestJournalLines(t *testing.T) {
	s := newSetup(t)
	bin := wrapper(t, `export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)`)
	d := harness.StartDaemon(t, s.config(), harness.WithBinary(bin))
	c := greeted(t, s.addr())
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit`), 5*time.Second)
	levels := map[string]string{"7": "debug", "6": "info", "5": "notice", "4": "warning", "3": "err"}
	re := regexp.MustCompile(`^<(\d)>smtp-gated\[\d+\]: ([a-z]+): `)
	for _, line := range d.LogLines() {
		m := re.FindStringSubmatch(line)
		if m == nil || levels[m[1]] != m[2] {
			t.Errorf("line %q: want \"<N>smtp-gated[PID]: LEVEL: \" with N the level", line)
		}
	}
}
