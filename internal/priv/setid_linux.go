package priv

import (
	"fmt"
	"syscall"
)

// setIDs sets the groups, group and user of every thread. On Linux the
// kernel keeps credentials per thread: syscall's Setgroups, Setresgid and
// Setresuid change them all (x/sys/unix's Setgroups only the calling one).
func setIDs(uid, gid int) error {
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setgroups %d: %w", gid, err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("setresuid %d: %w", uid, err)
	}
	return nil
}
