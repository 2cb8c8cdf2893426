package master

import "golang.org/x/sys/unix"

// somaxconn is kern.ipc.somaxconn.
func somaxconn() (int, bool) {
	n, err := unix.SysctlUint32("kern.ipc.somaxconn")
	return int(n), err == nil
}
