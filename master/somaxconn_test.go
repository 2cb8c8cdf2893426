package master

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"smtp-gated/internal/config"
)

// connect_queue not set: the kernel's SOMAXCONN; set: the value.
func TestBacklog(t *testing.T) {
	if got := config.Default().ConnectQueue; got != 0 {
		t.Fatalf("default connect_queue %d, want 0 (the kernel's maximum)", got)
	}
	want := fallbackBacklog
	if b, err := os.ReadFile("/proc/sys/net/core/somaxconn"); err == nil {
		if want, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			t.Fatal(err)
		}
	} else if n, ok := somaxconn(); ok {
		want = n
	}
	for _, c := range []struct{ set, want int }{{0, want}, {16, 16}, {1024, 1024}} {
		if got := backlog(c.set); got != c.want {
			t.Errorf("connect_queue %d: backlog %d, want %d", c.set, got, c.want)
		}
	}
}
