package lookup

import (
	"net/netip"
	"testing"

	"smtp-gated/internal/config"
)

func TestRemoteLoop(t *testing.T) {
	own := func() []netip.Addr {
		return []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}
	}
	local := netip.MustParseAddrPort("192.0.2.9:9199")
	for _, tc := range []struct {
		mode config.Mode
		dst  string
		loop bool
	}{
		{config.ModeRemoteUDP, "127.0.0.1:25", true},
		{config.ModeRemoteUDP, "127.3.4.5:25", true},
		{config.ModeRemote, "[::1]:25", true},
		{config.ModeRemote, "[::ffff:127.0.0.1]:25", true},
		{config.ModeRemote, "0.0.0.0:25", true},
		{config.ModeRemote, "[::]:25", true},
		{config.ModeRemote, "192.0.2.9:25", true},
		{config.ModeRemoteUDP, "192.0.2.7:2525", true},
		{config.ModeRemoteUDP, "[2001:db8::7]:25", true},
		{config.ModeRemoteUDP, "198.51.100.2:25", false},
		{config.ModeRemote, "[2001:db8::8]:25", false},
		// Not a helper's answer: the kernel's, judged by isLoop alone.
		{config.ModeNetfilter, "127.0.0.1:25", false},
	} {
		cfg := &config.Config{Mode: tc.mode}
		dst := netip.MustParseAddrPort(tc.dst)
		if why := remoteLoop(cfg, dst, local, own); (why != "") != tc.loop {
			t.Errorf("%v %v: remoteLoop = %q, want loop %v", tc.mode, dst, why, tc.loop)
		}
	}
}
