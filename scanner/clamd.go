package scanner

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// maxReply bounds a scanner's reply (clamd and mksd: one line; spamd: the
// headers of a CHECK answer). Anything longer is not a scanner talking.
const maxReply = 4096

// clamd is a client of ClamAV's clamd. addr is antivirus_path: a unix
// socket when it starts with "/", else host:port. Each scan opens a new
// connection (no IDSESSION): a restarted clamd is found again at once, and
// one slow scan cannot hold up the others.
//
// Over a unix socket the spool file goes as a descriptor (FILDES), so clamd
// needs no access to the spool directory and nothing is copied; over TCP
// the file is streamed (INSTREAM), which clamd caps at its StreamMaxLength.
type clamd struct {
	addr    string
	timeout time.Duration // timeout_scanner: the whole exchange
}

func (c *clamd) name() string { return "clamd" }

// scan asks clamd about the spool file. found is true for a virus; name is
// what clamd called it ("" when it gave no name).
func (c *clamd) scan(ctx context.Context, sp *spool) (found bool, name string, err error) {
	conn, err := dialScanner(ctx, c.addr, c.timeout)
	if err != nil {
		return false, "", err
	}
	defer conn.Close()
	var werr error
	if uc, ok := conn.(*net.UnixConn); ok {
		werr = fildes(uc, sp.f)
	} else {
		werr = instream(conn, sp.whole())
	}
	// Read even when sending failed: clamd that refuses a stream (over
	// StreamMaxLength) answers, then closes while we are still sending.
	reply, rerr := readClamdReply(conn)
	if len(reply) == 0 {
		return false, "", exchangeError(c.addr, c.timeout, werr, rerr)
	}
	return parseClamdReply(reply)
}

// ping sends PING and wants PONG.
func (c *clamd) ping(ctx context.Context) error {
	conn, err := dialScanner(ctx, c.addr, c.timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, werr := conn.Write([]byte("zPING\x00"))
	reply, rerr := readClamdReply(conn)
	if len(reply) == 0 {
		return exchangeError(c.addr, c.timeout, werr, rerr)
	}
	if r := strings.TrimRight(string(reply), "\x00\n"); r != "PONG" {
		return fmt.Errorf("%s: PING answered %q", c.addr, clip(r))
	}
	return nil
}

// dialScanner connects to addr ("/path" or host:port) and sets the
// deadline of the whole exchange.
func dialScanner(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return nil, fmt.Errorf("%s: no connection within %v", addr, timeout)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	conn.SetDeadline(deadline)
	return conn, nil
}

// exchangeError explains an exchange that produced no reply.
func exchangeError(addr string, timeout time.Duration, werr, rerr error) error {
	switch {
	case isTimeout(rerr) || isTimeout(werr):
		return fmt.Errorf("%s: no answer within %v", addr, timeout)
	case werr != nil:
		return fmt.Errorf("%s: send: %w", addr, werr)
	case rerr == nil || errors.Is(rerr, io.EOF):
		return fmt.Errorf("%s: connection closed without an answer", addr)
	default:
		return fmt.Errorf("%s: read: %w", addr, rerr)
	}
}

func isTimeout(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

// fildes sends "zFILDES\0", then one byte carrying the descriptor, as
// clamdscan --fdpass does (clamd refuses the descriptor when it rides with
// the command itself). clamd scans the file from offset 0, whatever the
// descriptor's offset, and leaves the (shared) offset moved.
func fildes(uc *net.UnixConn, f *os.File) error {
	if _, err := uc.Write([]byte("zFILDES\x00")); err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		_, _, serr = uc.WriteMsgUnix([]byte{0}, unix.UnixRights(int(fd)), nil)
	})
	if err != nil {
		return err
	}
	return serr
}

// instreamChunk is the size of one INSTREAM chunk.
const instreamChunk = 64 << 10

// instream sends "zINSTREAM\0", then r in chunks (4-byte big-endian
// length, data), then a zero-length chunk.
func instream(w io.Writer, r io.Reader) error {
	if _, err := w.Write([]byte("zINSTREAM\x00")); err != nil {
		return err
	}
	buf := make([]byte, 4+instreamChunk)
	for {
		n, err := io.ReadFull(r, buf[4:])
		if n > 0 {
			binary.BigEndian.PutUint32(buf, uint32(n))
			if _, werr := w.Write(buf[:4+n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("spool: read: %w", err)
		}
	}
	_, err := w.Write([]byte{0, 0, 0, 0})
	return err
}

// readClamdReply reads one reply: up to the NUL that ends it (z commands),
// a newline, or the end of the connection, at most maxReply bytes.
func readClamdReply(r io.Reader) ([]byte, error) {
	var out []byte
	buf := make([]byte, 512)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if i := bytes.IndexAny(out, "\x00\n"); i >= 0 {
			return out[:i+1], nil
		}
		if len(out) > maxReply {
			return out, nil // parseClamdReply refuses it
		}
		if err != nil {
			return out, err
		}
	}
}

// parseClamdReply reads clamd's answer to FILDES or INSTREAM:
//
//	fd[12]: Eicar-Signature FOUND
//	stream: OK
//	INSTREAM size limit exceeded. ERROR
//
// The name is "" when clamd gave none.
func parseClamdReply(b []byte) (found bool, name string, err error) {
	r := strings.TrimSuffix(strings.TrimSuffix(string(b), "\x00"), "\n")
	if r == "" {
		return false, "", errors.New("empty answer")
	}
	if len(r) > maxReply || !printable(r) {
		return false, "", fmt.Errorf("unreadable answer %q", clip(r))
	}
	switch {
	case strings.HasSuffix(r, " FOUND"):
		who, what, ok := strings.Cut(strings.TrimSuffix(r, " FOUND"), ":")
		if !ok || who == "" {
			return false, "", fmt.Errorf("malformed answer %q", clip(r))
		}
		return true, strings.TrimSpace(what), nil
	case strings.HasSuffix(r, " ERROR"):
		return false, "", errors.New(strings.TrimSuffix(r, " ERROR"))
	case strings.HasSuffix(r, ": OK"):
		return false, "", nil
	}
	return false, "", fmt.Errorf("unexpected answer %q", clip(r))
}

// printable reports whether s is printable ASCII: what every scanner
// answers, and all that may go into a log line or an SMTP reply.
func printable(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
