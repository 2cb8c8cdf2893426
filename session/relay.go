package session

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

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

// waitReadable waits, without reading, until src has data, has reached
// its end, or its read deadline passes. An idle session waits here holding
// no buffer.
func waitReadable(rc syscall.RawConn) error {
	var one [1]byte
	var perr error
	err := rc.Read(func(fd uintptr) bool {
		for {
			_, _, perr = unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if perr != unix.EINTR {
				break
			}
		}
		return perr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	// A pending error (a reset) is for the read that follows to report.
	return nil
}

// pump moves src to dst until src ends. It returns io.EOF when src
// closed, errIdle when nothing moved either way for idle, a writeError
// when dst failed, or the read error. How bytes move is per system
// (pump_*.go): spliced in the kernel where it can, copied elsewhere.
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
		if err := waitReadable(srcRC); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction is busy
				}
				return errIdle
			}
			return err
		}
		dst.SetWriteDeadline(time.Now().Add(idle))
		n, eof, err := moveBurst(srcRC, dstRC)
		if n > 0 {
			count.Add(uint64(n))
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
