package lockd

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// max_per_host with lock_on maxhost: the refusal locks the client (and
// runs the action script, once), so that it is refused as locked even
// when it is under the limit again.
func TestMaxHostLocks(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "max_per_host 1", "lock_on maxhost", "lock_duration 3600", "action_script "+s.script,
		"msg_max_per_host one at a time", "msg_virus_locked you are locked")
	code, _, first := greeting(t, "127.0.0.1", s.addr())
	if code != 220 {
		t.Fatalf("first connection: %d", code)
	}
	code, text, _ := greeting(t, "127.0.0.1", s.addr())
	if code != 554 || !strings.Contains(text, "one at a time") {
		t.Fatalf("second connection: %d %q, want 554 with msg_max_per_host", code, text)
	}
	if _, _, content := fileOwner(t, filepath.Join(s.lockDir(), "127.0.0.1")); content != "MAX_HOST\n" {
		t.Errorf("lock file content %q", content)
	}
	first.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, `), 5*time.Second)
	// Master books the end a moment after the worker's CLOSE line.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, text, _ = greeting(t, "127.0.0.1", s.addr())
		if !strings.Contains(text, "one at a time") || time.Now().After(deadline) {
			break
		}
	}
	if code != 554 || !strings.Contains(text, "you are locked") {
		t.Fatalf("after the first session ended: %d %q, want 554 locked", code, text)
	}
	env := s.waitEnvs(t, 1)[0]
	if env["FOUND"] != "MAX_HOST" || env["SOURCE_IP"] != "127.0.0.1" || env["LOCAL_PORT"] != strconv.Itoa(s.port) ||
		env["LOCK_FILE"] != filepath.Join(s.lockDir(), "127.0.0.1") {
		t.Errorf("script environment %v", env)
	}
	// As in 1.4, MAX_HOST has no target: the fourth argument is empty.
	if env["ARGC"] != "4" || env["ARG1"] != "MAX_HOST" || env["ARG2"] != "127.0.0.1" || env["ARG3"] != "-" || env["ARG4"] != "" {
		t.Errorf("arguments %s: %q %q %q %q", env["ARGC"], env["ARG1"], env["ARG2"], env["ARG3"], env["ARG4"])
	}
}

// max_load: above it, connections are refused with msg_system_load.
func TestMaxLoad(t *testing.T) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		t.Skip(err)
	}
	load, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if load < 0.02 {
		t.Skipf("load average %v: too idle to be above any limit", load)
	}
	s := newSetup(t)
	d := s.start(t, "max_load 0.01", "msg_system_load too busy")
	code, text, _ := greeting(t, "127.0.0.1", s.addr())
	if code != 554 || !strings.Contains(text, "test-proxy too busy") {
		t.Fatalf("load %v over max_load 0.01: %d %q, want 554 msg_system_load", load, code, text)
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=load, `), 5*time.Second)
}
