//go:build freebsd || openbsd

package resource

import "golang.org/x/sys/unix"

// setPriority sets the process's nice value: on the BSDs it is one value
// for the whole process.
func setPriority(prio int) error {
	return unix.Setpriority(unix.PRIO_PROCESS, 0, prio)
}
