package session

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// relayBuf is the size of the buffer one read borrows. Buffers come from a
// pool and are held only while data moves, so an idle session costs its
// goroutines and no buffer.
const relayBuf = 32 * 1024

var bufPool = sync.Pool{New: func() any { b := make([]byte, relayBuf); return &b }}

// writeError is a failed write to the other side.
type writeError struct{ err error }

func (e writeError) Error() string { return "write: " + e.err.Error() }
func (e writeError) Unwrap() error { return e.err }

// errIdle ends a relay on which nothing moved for the idle timeout.
var errIdle = errors.New("idle")

// relay copies both ways until one side closes or nothing moves for idle.
// It returns the CLOSE cause (client, server, idle) and the bytes received
// from each side.
func relay(client, server *net.TCPConn, idle time.Duration) (by string, cliRx, srvRx uint64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var fromClient, fromServer atomic.Uint64
	type end struct {
		side string
		err  error
	}
	done := make(chan end, 2)
	go func() { done <- end{"client", pump(client, server, &fromClient, &last, idle)} }()
	go func() { done <- end{"server", pump(server, client, &fromServer, &last, idle)} }()
	first := <-done
	// Whichever side ended first ends the session: after a server's 221
	// nothing more is wanted from the client, and the other way round.
	client.Close()
	server.Close()
	<-done
	by = first.side
	var we writeError
	switch {
	case errors.Is(first.err, errIdle):
		by = "idle"
	case errors.As(first.err, &we):
		// Writing failed: it is the other side that went away.
		by = map[string]string{"client": "server", "server": "client"}[first.side]
	}
	return by, fromClient.Load(), fromServer.Load()
}

// pump copies src to dst. It returns io.EOF when src closed, errIdle when
// nothing moved either way for idle, or the read or write error (a write
// error is reported as the other side's end by the caller's close).
func pump(src, dst *net.TCPConn, count *atomic.Uint64, last *atomic.Int64, idle time.Duration) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		var buf *[]byte
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			buf = bufPool.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *buf)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				bufPool.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if err != nil {
			if buf != nil {
				bufPool.Put(buf)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is busy
				}
				return errIdle
			}
			return err
		}
		if rerr != nil || n == 0 {
			bufPool.Put(buf)
			if rerr != nil {
				return rerr
			}
			return io.EOF
		}
		count.Add(uint64(n))
		last.Store(time.Now().UnixNano())
		dst.SetWriteDeadline(time.Now().Add(idle))
		_, werr := dst.Write((*buf)[:n])
		bufPool.Put(buf)
		if werr != nil {
			return writeError{werr}
		}
	}
}
