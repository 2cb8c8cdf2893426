package master

import "golang.org/x/sys/unix"

// somaxconn is kern.somaxconn.
func somaxconn() (int, bool) {
	n, err := unix.SysctlUint32("kern.somaxconn")
	return int(n), err == nil
}
