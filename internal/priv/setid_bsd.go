//go:build freebsd || openbsd

package priv

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// setIDs sets the groups, group and user of the process (the BSD kernels
// keep credentials per process).
func setIDs(uid, gid int) error {
	if err := unix.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setgroups %d: %w", gid, err)
	}
	if err := unix.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := unix.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	return nil
}
