package master

import (
	"testing"
	"time"

	"smtp-gated/ipc"
)

// Every command of the list is run by master or by lockd, and master
// runs nothing else.
func TestCtlTable(t *testing.T) {
	for _, c := range ipc.CtlCommands {
		if _, ok := ctlRuns[c.Name]; ok == c.Lockd {
			t.Errorf("%s: run by master %v, by lockd %v", c.Name, ok, c.Lockd)
		}
	}
	for name := range ctlRuns {
		if ipc.LookupCtl(name) == nil {
			t.Errorf("master runs %q, which is not in ipc.CtlCommands", name)
		}
	}
}

// The privileges a call needs follow its form.
func TestCtlPrivileged(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want bool
	}{
		{[]string{"status"}, false},
		{[]string{"stats", "--prometheus"}, false},
		{[]string{"show", "config"}, true},
		{[]string{"show"}, true},
		{[]string{"kill", "12"}, true},
		{[]string{"ratelimit", "show", "192.0.2.1"}, false},
		{[]string{"ratelimit", "set", "192.0.2.1", "messages=1"}, true},
		{[]string{"ratelimit"}, true},
		{[]string{"ratelimit", "ADDR"}, true},
		{[]string{"locks"}, false},
		{[]string{"unlock", "192.0.2.1"}, true},
	} {
		c := ipc.LookupCtl(tt.args[0])
		if got := c.Privileged(tt.args[1:]); got != tt.want {
			t.Errorf("%q: privileged %v, want %v", tt.args, got, tt.want)
		}
	}
}

// A slot waits 250 ms after a death, twice as long after each failure in
// a row, never more than 30 s.
func TestBackoff(t *testing.T) {
	for failures, want := range map[int]time.Duration{0: 250 * time.Millisecond, 1: 500 * time.Millisecond,
		3: 2 * time.Second, 6: 16 * time.Second, 7: 30 * time.Second, 50: 30 * time.Second} {
		if got := (&proc{failures: failures}).backoff(); got != want {
			t.Errorf("after %d failures: %v, want %v", failures, got, want)
		}
	}
}
