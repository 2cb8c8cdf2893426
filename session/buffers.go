package session

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// An idle session holds no buffer. Most sessions spend most of their
// time waiting for the client's next command or the MTA's next reply, and
// a worker may hold thousands of them: the buffers of a session's readers
// and writers come from pools while they hold bytes and go back when they
// are empty. A writer goes back once it is flushed; a reader, when it has
// nothing buffered and the session waits for the peer (wait): the wait
// itself holds no buffer, and the first bytes are read into one taken
// from the pool as soon as the socket has them, by the same read that
// finds them, so a busy session makes no more system calls than one
// with its own buffers.

// The sizes of the pooled buffers: of the writers, and of the readers
// unless buffer_size asks more of the client's.
const (
	writeSize = 4096
	readSize  = 4096
)

var (
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeSize) }}
	readers sync.Map // size → *sync.Pool of *bufio.Reader
)

// readerPool returns the pool of readers of size bytes.
func readerPool(size int) *sync.Pool {
	if p, ok := readers.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := readers.LoadOrStore(size, &sync.Pool{New: func() any { return bufio.NewReaderSize(nil, size) }})
	return p.(*sync.Pool)
}

// lazyWriter is a bufio.Writer that holds a buffer only while bytes wait
// in it. An error is kept, as bufio.Writer keeps it: a writer that failed
// keeps its buffer and fails again.
type lazyWriter struct {
	w  io.Writer
	bw *bufio.Writer // nil while empty
}

func (l *lazyWriter) get() *bufio.Writer {
	if l.bw == nil {
		l.bw = writers.Get().(*bufio.Writer)
		l.bw.Reset(l.w)
	}
	return l.bw
}

func (l *lazyWriter) Write(b []byte) (int, error)       { return l.get().Write(b) }
func (l *lazyWriter) WriteString(s string) (int, error) { return l.get().WriteString(s) }

// Buffered returns the number of bytes waiting to be written.
func (l *lazyWriter) Buffered() int {
	if l.bw == nil {
		return 0
	}
	return l.bw.Buffered()
}

// Flush writes what waits, and gives the buffer back when all went out.
func (l *lazyWriter) Flush() error {
	if l.bw == nil {
		return nil
	}
	if err := l.bw.Flush(); err != nil {
		return err
	}
	l.bw.Reset(nil)
	writers.Put(l.bw)
	l.bw = nil
	return nil
}

// lazyReader is the source of one side's bufio.Reader, which it lends
// out and takes back (wait). A reader it lent reads through it: from src
// normally, and from the socket once without waiting while wait has it
// look for bytes.
type lazyReader struct {
	pool *sync.Pool
	src  io.Reader // what the reader reads: the socket under the idle clock
	back *pushback // bytes given back ahead of the socket, if any
	conn idleReader
	rc   syscall.RawConn // nil: the reader is never given back while waiting
	n    *atomic.Uint64  // counts the bytes read from the socket
	fd   int             // >= 0: Read reads this descriptor, without waiting
	size int
	// br, err: what try read, and how that ended; tryFn is l.try, made
	// once.
	br    *bufio.Reader
	err   error
	tryFn func(uintptr) bool
}

// newLazyReader returns the source of readers of size bytes that read
// src, and conn's socket while they wait; back, if not nil, is under src.
func newLazyReader(conn idleReader, src io.Reader, back *pushback, size int, n *atomic.Uint64) *lazyReader {
	var rc syscall.RawConn
	if conn.c != nil { // nil: no MTA (checks.go, refuseLookup)
		rc, _ = conn.c.SyscallConn()
	}
	l := &lazyReader{pool: readerPool(size), src: src, back: back, conn: conn, rc: rc, n: n, fd: -1, size: size}
	l.tryFn = l.try
	return l
}

// try is wait's look at the socket: it reads what the socket holds into
// a reader from the pool (l.br), without waiting. It returns false, and
// gives the reader back, when there is nothing to read yet.
func (l *lazyReader) try(fd uintptr) bool {
	l.br = l.reader()
	l.fd = int(fd)
	_, l.err = l.br.Peek(1)
	l.fd = -1
	if errors.Is(l.err, syscall.EAGAIN) {
		l.br.Reset(nil)
		l.pool.Put(l.br)
		l.br = nil
		return false
	}
	return true
}

// reader returns a reader from the pool, reading through l.
func (l *lazyReader) reader() *bufio.Reader {
	br := l.pool.Get().(*bufio.Reader)
	br.Reset(l)
	return br
}

// release gives br back to the pool, for good: the session is over.
func (l *lazyReader) release(br *bufio.Reader) {
	if br.Size() == l.size {
		br.Reset(nil)
		l.pool.Put(br)
	}
}

func (l *lazyReader) Read(b []byte) (int, error) {
	if l.fd < 0 {
		return l.src.Read(b)
	}
	for {
		n, err := syscall.Read(l.fd, b)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			return 0, err // wait goes on waiting
		case err != nil:
			// As net.Conn's Read says it.
			return 0, &net.OpError{Op: "read", Net: "tcp", Source: l.conn.c.LocalAddr(), Addr: l.conn.c.RemoteAddr(),
				Err: os.NewSyscallError("read", err)}
		case n == 0:
			return 0, io.EOF
		}
		l.n.Add(uint64(n))
		l.conn.k.touch()
		return n, nil
	}
}

// wait returns br if it holds bytes, or bytes wait behind it. Otherwise it
// gives br back to the pool and waits, holding no buffer, until the
// socket has bytes or a read of it would fail (timeout_idle, the deadline
// set on the socket, its close); the reader it then returns holds the
// bytes read, or is empty and the error says why. The reader returned is
// never nil.
func (l *lazyReader) wait(br *bufio.Reader) (*bufio.Reader, error) {
	if br.Buffered() > 0 || l.back != nil && len(l.back.back) > 0 || l.rc == nil || br.Size() != l.size {
		return br, nil
	}
	br.Reset(nil)
	l.pool.Put(br)
	l.br, l.err = nil, nil
	err := l.conn.wait(l.rc, l.tryFn)
	br = l.br
	if br == nil {
		br = l.reader()
	}
	if err == nil {
		err = l.err
	}
	l.br, l.err = nil, nil
	return br, err
}
