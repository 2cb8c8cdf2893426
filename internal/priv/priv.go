// Package priv drops a child process's privileges: chroot, then the
// groups, group and user of set_user/set_group, in the order OpenSMTPD
// uses, and then checks that root cannot be had back.
package priv

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// ErrNotRoot is returned by Drop when the process is not root: there is
// nothing to drop, and the caller logs that it runs unprivileged as it is.
var ErrNotRoot = errors.New("not started as root: running without changing user or root directory")

// DefaultUser is used when set_user is empty and the daemon runs as root:
// a child never keeps root.
const DefaultUser = "nobody"

// Identity is the user and group a child becomes.
type Identity struct {
	User  string
	UID   int
	GID   int
	Group string
}

// Resolve finds the ids of set_user and set_group. It reads the user and
// group databases, so it must run before any chroot. An empty userName
// means DefaultUser; an empty groupName the user's primary group.
func Resolve(userName, groupName string) (*Identity, error) {
	if userName == "" {
		userName = DefaultUser
	}
	u, err := user.Lookup(userName)
	if err != nil {
		return nil, fmt.Errorf("set_user %q: %w", userName, err)
	}
	id := &Identity{User: userName}
	if id.UID, err = strconv.Atoi(u.Uid); err != nil {
		return nil, fmt.Errorf("set_user %q: uid %q: %w", userName, u.Uid, err)
	}
	gid := u.Gid
	id.Group = gid
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			return nil, fmt.Errorf("set_group %q: %w", groupName, err)
		}
		gid, id.Group = g.Gid, groupName
	}
	if id.GID, err = strconv.Atoi(gid); err != nil {
		return nil, fmt.Errorf("set_group %q: gid %q: %w", groupName, gid, err)
	}
	if id.UID == 0 {
		return nil, fmt.Errorf("set_user %q is root: children must not keep root", userName)
	}
	return id, nil
}

// Drop changes root to dir (when dir is not empty) and becomes id, for
// every thread of the process. It returns ErrNotRoot, having done nothing,
// when the process is not root.
func Drop(id *Identity, dir string) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	// Files under /etc cannot be read after chroot: load the time zone now.
	_ = time.Local.String()
	if dir != "" {
		if err := syscall.Chroot(dir); err != nil {
			return fmt.Errorf("chroot %s: %w", dir, err)
		}
		if err := syscall.Chdir("/"); err != nil {
			return fmt.Errorf("chdir / in %s: %w", dir, err)
		}
	}
	if err := setIDs(id.UID, id.GID); err != nil {
		return err
	}
	if syscall.Setuid(0) == nil || os.Geteuid() == 0 || os.Getuid() == 0 {
		return errors.New("root could be regained after dropping privileges")
	}
	return nil
}
