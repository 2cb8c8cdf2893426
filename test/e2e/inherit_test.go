package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// holders lists the descriptors of pid that are open on path.
func holders(pid int, path string) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && target == path {
			out = append(out, e.Name())
		}
	}
	return out
}

// A descriptor open when the daemon starts (as `exec 7</etc/shadow` in
// the shell that starts it would leave) is closed by master at once: no
// process of the daemon holds it, and neither does action_script.
func TestInheritedDescriptorClosed(t *testing.T) {
	s := newSetup(t)
	secret := filepath.Join(s.dir, "secret")
	if err := os.WriteFile(secret, []byte("not for children\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// The action script lists its own descriptors' targets.
	out := filepath.Join(s.dir, "out")
	lock := filepath.Join(s.dir, "lock")
	for _, d := range []string{out, lock} {
		os.Mkdir(d, 0o777)
		os.Chmod(d, 0o777) // the children run unprivileged
	}
	script := filepath.Join(s.dir, "action.sh")
	body := fmt.Sprintf("#!/bin/sh\nfor f in /proc/$$/fd/*; do echo \"$f $(readlink $f)\"; done > %[1]s/fds.tmp && mv %[1]s/fds.tmp %[1]s/fds\n", out)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}

	// Descriptors 3 to 6 closed, 7 the file.
	d := harness.StartDaemon(t, s.config("max_per_host 1", "lock_on maxhost", "lock_duration 60",
		"lock_path "+lock, "action_script "+script),
		harness.WithExtraFiles(nil, nil, nil, nil, f))

	pids := append([]int{d.Pid()}, harness.Descendants(d.Pid())...)
	if len(pids) < 6 {
		t.Fatalf("master and %d children, want at least 5 children", len(pids)-1)
	}
	for _, pid := range pids {
		if fds := holders(pid, secret); len(fds) > 0 {
			t.Errorf("pid %d (%s) holds %s on descriptors %v", pid, cmdline(pid), secret, fds)
		}
	}

	// A second connection from the same host is refused and runs the
	// action script.
	first := greeted(t, s.addr())
	defer first.Quit()
	c := harness.Dial(t, s.addr())
	c.Expect(554)
	c.Close()
	d.WaitLog(t, regexp.MustCompile(`action_script .* done in`), 10*time.Second)
	b, err := os.ReadFile(filepath.Join(out, "fds"))
	if err != nil {
		t.Fatalf("action script output: %v", err)
	}
	if !strings.Contains(string(b), "/proc/") {
		t.Fatalf("action script listed no descriptors: %q", b)
	}
	if strings.Contains(string(b), secret) {
		t.Errorf("action_script holds %s:\n%s", secret, b)
	}
}
