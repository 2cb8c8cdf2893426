//go:build !linux

package session

import "syscall"

// moveBurst copies: splice(2) is Linux's.
func moveBurst(src, dst syscall.RawConn) (int64, bool, error) { return copyBurst(src, dst) }
