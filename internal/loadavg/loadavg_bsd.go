//go:build freebsd || openbsd || netbsd || dragonfly || darwin

package loadavg

import "golang.org/x/sys/unix"

// Get returns the 1-minute load average.
func Get() (float64, error) {
	b, err := unix.SysctlRaw("vm.loadavg")
	if err != nil {
		return 0, err
	}
	return parse(b)
}
