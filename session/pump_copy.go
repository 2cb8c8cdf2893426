package session

import (
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBuf is the buffer one burst borrows where bytes are copied through
// user space. Buffers are pooled and held only while bytes move.
const copyBuf = 64 * 1024

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// copyBurst is moveBurst through a buffer: for systems without splice(2),
// and when no pipe can be had.
func copyBurst(src, dst syscall.RawConn) (moved int64, eof bool, err error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		var n int
		var rerr error
		cerr := src.Control(func(fd uintptr) {
			for {
				n, rerr = unix.Read(int(fd), buf)
				if rerr != unix.EINTR {
					break
				}
			}
		})
		switch {
		case cerr != nil:
			return moved, false, cerr
		case rerr == unix.EAGAIN:
			return moved, false, nil
		case rerr != nil:
			return moved, false, rerr
		case n == 0:
			return moved, true, nil
		}
		for off := 0; off < n; {
			var m int
			var werr error
			err := dst.Write(func(fd uintptr) bool {
				for {
					m, werr = unix.Write(int(fd), buf[off:n])
					if werr != unix.EINTR {
						break
					}
				}
				return werr != unix.EAGAIN
			})
			if err == nil {
				err = werr
			}
			if err != nil {
				return moved, false, writeError{err}
			}
			off += m
			moved += int64(m)
		}
	}
}
