package session

import (
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// spliceMax is the most one splice call moves.
const spliceMax = 1 << 20

// pipe is a kernel pipe through which splice(2) moves bytes from one
// socket to the other without copying them to user space. Pipes are
// pooled and held only while bytes move.
type pipe struct{ r, w int }

var pipePool = sync.Pool{New: func() any {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	p := &pipe{r: fds[0], w: fds[1]}
	// A pooled pipe the garbage collector drops must not leak its
	// descriptors.
	runtime.SetFinalizer(p, func(p *pipe) { p.close() })
	return p
}}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// moreBurst moves what src has now to dst, splicing through a pipe. It
// waits for dst to take the bytes (bounded by dst's write deadline) but
// not for src to produce more: it returns once src has nothing more for
// the moment (eof when src ended).
func moreBurst(src, dst syscall.RawConn) (moved int64, eof bool, err error) {
	p, _ := pipePool.Get().(*pipe)
	if p == nil {
		return copyBurst(src, dst)
	}
	clean := true
	defer func() {
		if clean {
			pipePool.Put(p)
		} else {
			runtime.SetFinalizer(p, nil)
			p.close()
		}
	}()
	for {
		var n int64
		var serr error
		cerr := src.Control(func(fd uintptr) {
			for {
				n, serr = unix.Splice(int(fd), nil, p.w, nil, spliceMax, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if serr != unix.EINTR {
					break
				}
			}
		})
		switch {
		case cerr != nil:
			return moved, false, cerr
		case serr == unix.EAGAIN:
			return moved, false, nil
		case serr != nil:
			return moved, false, serr
		case n == 0:
			return moved, true, nil
		}
		for n > 0 {
			var m int64
			var werr error
			err := dst.Write(func(fd uintptr) bool {
				for {
					m, werr = unix.Splice(p.r, nil, int(fd), nil, int(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
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
				clean = false // bytes may be left in the pipe
				return moved, false, writeError{err}
			}
			n -= m
			moved += m
		}
	}
}
