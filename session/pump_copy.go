package session

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// copyBurst moves what src has now to dst through a pooled buffer, and
// returns once src has nothing more for the moment (eof when src ended).
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
		if err := writeAll(dst, buf[:n]); err != nil {
			return moved, false, err
		}
		moved += int64(n)
	}
}
