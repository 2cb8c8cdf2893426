//go:build linux && !cgo

package priv

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Restrict sets PR_SET_NO_NEW_PRIVS and empties the capability bounding
// set, for every thread of the process. Without cgo there is no code that
// runs before the Go runtime's threads, so it is done on all of them at
// once.
func Restrict() error {
	if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", e)
	}
	for c := uintptr(0); c < 64; c++ {
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, c, 0, 0, 0)
		if err != nil {
			break // past the kernel's last capability
		}
		if in != 1 {
			continue
		}
		if _, _, e := syscall.AllThreadsSyscall(syscall.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0); e != 0 {
			return fmt.Errorf("PR_CAPBSET_DROP %d: %w", c, e)
		}
	}
	return nil
}
