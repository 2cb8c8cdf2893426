//go:build freebsd || openbsd || netbsd || dragonfly || darwin

package scanner

import "golang.org/x/sys/unix"

// loadAvg returns the 1-minute load average (spam_max_load).
func loadAvg() (float64, error) {
	b, err := unix.SysctlRaw("vm.loadavg")
	if err != nil {
		return 0, err
	}
	return parseLoadavg(b)
}
