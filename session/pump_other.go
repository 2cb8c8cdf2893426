//go:build !linux

package session

import "syscall"

// moreBurst copies: splice(2) is Linux's.
func moreBurst(src, dst syscall.RawConn) (int64, bool, error) { return copyBurst(src, dst) }
