package config

import (
	"strings"
	"testing"
	"time"
)

// Each timeout's 0 has the meaning durations.go gives it, whichever
// process asks.
func TestDurations(t *testing.T) {
	c := Default()
	if c.IdleTimeout() != 300*time.Second || c.ScannerTimeout() != 30*time.Second || c.LookupTimeout() != 10*time.Second {
		t.Errorf("defaults: idle %v, scanner %v, lookup %v", c.IdleTimeout(), c.ScannerTimeout(), c.LookupTimeout())
	}
	c.TimeoutSession, c.TimeoutConnect, c.TimeoutLookup, c.TimeoutScanner, c.TimeoutSpam, c.TimeoutShutdown = 0, 0, 0, 0, 0, 0
	for name, tc := range map[string]struct{ got, want time.Duration }{
		"timeout_session":  {c.SessionTimeout(), 0},
		"timeout_connect":  {c.ConnectTimeout(), 0},
		"timeout_lookup":   {c.LookupTimeout(), 10 * time.Second},
		"timeout_scanner":  {c.ScannerTimeout(), 30 * time.Second},
		"timeout_spam":     {c.SpamTimeout(), 30 * time.Second},
		"timeout_shutdown": {c.ShutdownTimeout(), 0},
	} {
		if tc.got != tc.want {
			t.Errorf("%s 0: %v, want %v", name, tc.got, tc.want)
		}
	}
	if !Deadline(0).IsZero() || Deadline(time.Second).IsZero() {
		t.Error("Deadline")
	}
	c.TimeoutScanner = 1 << 62
	if d := c.ScannerTimeout(); d <= 0 {
		t.Errorf("a huge timeout_scanner overflows: %v", d)
	}
	for _, opt := range []string{"timeout_idle", "timeout_direct"} {
		_, err := Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\n"+opt+" 0\n"), "t.conf")
		if err == nil || !strings.Contains(err.Error(), opt) {
			t.Errorf("%s 0: %v, want an error naming it", opt, err)
		}
	}
}
