package session

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/ipc"
)

// relayBuf is the buffer one read borrows from the pool.
const relayBuf = 16 * 1024

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
func relay(client, server *net.TCPConn, idle time.Duration) (by ipc.CloseCause, cliRx, srvRx uint64) {
	var fromClient, fromServer atomic.Uint64
	by = relayInto(client, server, idle, &fromClient, &fromServer)
	return by, fromClient.Load(), fromServer.Load()
}

// relayInto is relay adding the bytes received from each side to
// fromClient and fromServer as they move, where the status query sees
// them. It returns the CLOSE cause.
func relayInto(client, server *net.TCPConn, idle time.Duration, fromClient, fromServer *atomic.Uint64) (by ipc.CloseCause) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	type end struct {
		side string
		err  error
	}
	done := make(chan end, 2)
	go func() { done <- end{"client", pump(client, server, fromClient, &last, idle)} }()
	go func() { done <- end{"server", pump(server, client, fromServer, &last, idle)} }()
	first := <-done
	// Whichever side ended first ends the session: after a server's 221
	// nothing more is wanted from the client, and the other way round.
	client.Close()
	server.Close()
	<-done
	by = ipc.CloseCause(first.side)
	var we writeError
	switch {
	case errors.Is(first.err, errIdle):
		by = "idle"
	case errors.As(first.err, &we):
		// Writing failed: it is the other side that went away.
		by = map[string]ipc.CloseCause{"client": ipc.CloseServer, "server": ipc.CloseClient}[first.side]
	}
	return by
}

// pump moves src to dst until src ends. It returns io.EOF when src
// closed, errIdle when nothing moved either way for idle, a writeError
// when dst failed, or the read error.
//
// Small bursts, the SMTP dialogue itself, are copied through a buffer
// that is taken from a pool only once src is readable, so an idle session
// holds no buffer. A burst that fills the buffer is bulk data: the rest of
// it is moved by moreBurst (pump_*.go), spliced in the kernel on Linux.
func pump(src, dst *net.TCPConn, count *atomic.Uint64, last *atomic.Int64, idle time.Duration) error {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		var bp *[]byte
		var n int
		var rerr error
		err := srcRC.Read(func(fd uintptr) bool {
			bp = bufPool.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *bp)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				bufPool.Put(bp)
				bp = nil
				return false
			}
			return true
		})
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is busy
				}
				return errIdle
			}
			return err
		}
		if rerr != nil || n == 0 {
			bufPool.Put(bp)
			if rerr != nil {
				return rerr
			}
			return io.EOF
		}
		dst.SetWriteDeadline(time.Now().Add(idle))
		werr := writeAll(dstRC, (*bp)[:n])
		full := n == len(*bp)
		bufPool.Put(bp)
		count.Add(uint64(n))
		last.Store(time.Now().UnixNano())
		if werr != nil {
			return werr
		}
		if !full {
			continue
		}
		more, eof, err := moreBurst(srcRC, dstRC)
		if more > 0 {
			count.Add(uint64(more))
			last.Store(time.Now().UnixNano())
		}
		if err != nil {
			return err
		}
		if eof {
			return io.EOF
		}
	}
}

// writeAll writes b to dst, waiting for dst (bounded by its write
// deadline). A failure is a writeError.
func writeAll(dst syscall.RawConn, b []byte) error {
	for len(b) > 0 {
		var m int
		var werr error
		err := dst.Write(func(fd uintptr) bool {
			for {
				m, werr = unix.Write(int(fd), b)
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
			return writeError{err}
		}
		b = b[m:]
	}
	return nil
}
