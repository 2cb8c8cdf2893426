package master

import (
	"fmt"
	"net"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// watchdogTicks returns a channel that ticks at half the watchdog interval
// systemd asked for (WATCHDOG_USEC, for this pid when WATCHDOG_PID is
// set), or nil when there is no watchdog. The main loop sends WATCHDOG=1
// on each tick: a loop that hangs stops the pings, and systemd restarts
// the daemon.
func watchdogTicks() (<-chan time.Time, time.Duration) {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return nil, 0
	}
	return time.NewTicker(d / 2).C, d
}

// activated returns the TCP listener systemd passed (socket activation:
// LISTEN_FDS for this pid), or nil when there is none. The descriptors are
// close-on-exec and LISTEN_* is removed from the environment, so children
// inherit neither. More than one socket, or one that is not a TCP
// listener, is an error.
func activated() (*net.TCPListener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	switch len(ls) {
	case 0:
		return nil, nil
	case 1:
	default:
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
		return nil, fmt.Errorf("socket activation: %d sockets passed, want one", len(ls))
	}
	tl, ok := ls[0].(*net.TCPListener)
	if !ok {
		if ls[0] != nil {
			ls[0].Close()
		}
		return nil, fmt.Errorf("socket activation: the socket passed is not a TCP listener (%T)", ls[0])
	}
	return tl, nil
}
