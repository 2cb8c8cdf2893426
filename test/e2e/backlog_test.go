package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// Without connect_queue the listening socket's backlog is the kernel's
// SOMAXCONN; with it, the value given (as ss(8) shows it: Send-Q of a
// listening socket).
func TestListenBacklog(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Skipf("no somaxconn: %v", err)
	}
	somaxconn := strings.TrimSpace(string(b))
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("no ss(8)")
	}
	for _, tc := range []struct {
		extra []string
		want  string
	}{{nil, somaxconn}, {[]string{"connect_queue 16"}, "16"}} {
		s := newSetup(t)
		d := s.start(t, tc.extra...)
		out, err := exec.Command("ss", "-Hltn", fmt.Sprintf("sport = :%d", s.port)).Output()
		if err != nil {
			t.Fatalf("ss: %v", err)
		}
		f := strings.Fields(string(out))
		if len(f) < 3 || f[0] != "LISTEN" {
			t.Fatalf("ss: %q", out)
		}
		if _, err := strconv.Atoi(f[2]); err != nil || f[2] != tc.want {
			t.Errorf("%v: backlog %s, want %s", tc.extra, f[2], tc.want)
		}
		d.Stop(t)
	}
}
