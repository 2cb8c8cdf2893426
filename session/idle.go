package session

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// timeout_idle measures silence, as in 1.4: any byte read from either
// side, the client or the MTA, restarts it, during DATA too. A client
// that uploads a long message slowly is therefore never cut off while
// its bytes flow, even though the MTA says nothing until the final dot;
// and an MTA that takes a while to answer is not cut off while the
// client still talks. The scan of a message is not silence: it is bounded
// by timeout_scanner and timeout_spam, and the clock stands still while
// it runs.
//
// Each socket still has its own read deadline (timeout_idle from when it
// was set); when one passes, the read asks the clock whether the session
// was really silent that long, and if not it waits on.

// idleClock is the session's timeout_idle.
type idleClock struct {
	idle time.Duration
	last atomic.Int64 // unix nanoseconds of the last byte read, either side
	held atomic.Int32 // > 0 while the clock stands still (a scan)
	off  atomic.Bool  // the relayed session is over: deadlines are final
}

func newIdleClock(idle time.Duration) *idleClock {
	k := &idleClock{idle: idle}
	k.touch()
	return k
}

// touch records a byte read now.
func (k *idleClock) touch() { k.last.Store(time.Now().UnixNano()) }

// hold stops the clock until the function it returns is called; the
// silence counts from then.
func (k *idleClock) hold() (release func()) {
	k.held.Add(1)
	return func() {
		k.touch()
		k.held.Add(-1)
	}
}

// stop ends the clock's part: from now on a read deadline that passes is
// final (the takeover session has timeout_session, direct relay
// timeout_direct).
func (k *idleClock) stop() { k.off.Store(true) }

// left returns how long the session may still stay silent; 0 or less
// when timeout_idle has passed.
func (k *idleClock) left() time.Duration {
	if k.held.Load() > 0 {
		return k.idle
	}
	return time.Until(time.Unix(0, k.last.Load()).Add(k.idle))
}

// idleReader reads a socket of the session under the idle clock.
type idleReader struct {
	c   *net.TCPConn
	k   *idleClock
	cut *atomic.Bool // set by interrupt: the deadline that passes is final
}

// newIdleReader reads c under clock k.
func newIdleReader(c *net.TCPConn, k *idleClock) idleReader {
	return idleReader{c: c, k: k, cut: new(atomic.Bool)}
}

// interrupt makes a read of r under way (or the next) return now with
// os.ErrDeadlineExceeded, whatever the clock says; resume undoes it.
func (r idleReader) interrupt() {
	r.cut.Store(true)
	r.c.SetReadDeadline(time.Now())
}

// resume lets reads of r wait again, without a deadline of their own.
func (r idleReader) resume() {
	r.cut.Store(false)
	r.c.SetReadDeadline(time.Time{})
}

func (r idleReader) Read(p []byte) (int, error) {
	for {
		n, err := r.c.Read(p)
		if n > 0 {
			r.k.touch()
		}
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || r.k.off.Load() || r.cut.Load() {
			return n, err
		}
		left := r.k.left()
		if left <= 0 {
			return n, err
		}
		// The other side spoke meanwhile, or a scan runs: wait on.
		r.c.SetReadDeadline(time.Now().Add(left))
	}
}

// wait calls f with the socket's descriptor until f returns true, and
// waits for the socket to be readable in between, under the clock as
// Read: f reads the socket without waiting (lazyReader.wait).
func (r idleReader) wait(rc syscall.RawConn, f func(fd uintptr) bool) error {
	for {
		err := rc.Read(f)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || r.k.off.Load() || r.cut.Load() {
			return err
		}
		left := r.k.left()
		if left <= 0 {
			return err
		}
		r.c.SetReadDeadline(time.Now().Add(left))
	}
}
