package scanner

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSpoolHeader bounds the spool header line (src, ident, dst, trns: far
// less in practice).
const maxSpoolHeader = 4096

// spool is one spool file received from a session worker: its first line
// is the spool header (spool_header: src=..., ident=..., dst=..., trns=...),
// the rest the dot-unstuffed message with CRLF line endings.
//
// The descriptor's file offset is shared with the session worker (and with
// clamd, which moves it): everything here reads with pread (ReadAt) and
// never depends on it.
type spool struct {
	f    *os.File
	size int64 // bytes in the file
	body int64 // offset of the message, after the spool header line
}

// openSpool checks the descriptor a session sent (a regular file, open
// read-only) and finds where the message starts. header is spool_header:
// the first line is skipped when it is that header; an empty spool_header
// means there is no header line.
func openSpool(f *os.File, header string) (*spool, error) {
	if f == nil {
		return nil, errors.New("spool: no descriptor")
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("spool: descriptor is not a regular file (%v)", fi.Mode().Type())
	}
	// clamd gets this very descriptor (FILDES): a writable one would let
	// a scanner write into the spool file.
	if err := readOnly(f); err != nil {
		return nil, err
	}
	s := &spool{f: f, size: fi.Size()}
	if header == "" || s.size == 0 {
		return s, nil
	}
	buf := make([]byte, min(s.size, maxSpoolHeader))
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read: %w", err)
	}
	buf = buf[:n]
	prefix := header + ":"
	if len(buf) < len(prefix) || !strings.EqualFold(string(buf[:len(prefix)]), prefix) {
		// Not our header (spool_header changed by a reload in between,
		// say): scan the whole file as the message.
		return s, nil
	}
	i := bytes.IndexByte(buf, '\n')
	switch {
	case i >= 0:
		s.body = int64(i + 1)
	case int64(n) == s.size:
		s.body = s.size // only a header: an empty message
	default:
		return nil, fmt.Errorf("spool: header line longer than %d bytes", maxSpoolHeader)
	}
	return s, nil
}

// readOnly checks that f was opened O_RDONLY.
func readOnly(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if ferr != nil {
		return fmt.Errorf("spool: fcntl: %w", ferr)
	}
	if flags&unix.O_ACCMODE != unix.O_RDONLY {
		return errors.New("spool: descriptor is open for writing; send one opened read-only")
	}
	return nil
}

// msgSize is the size of the message, without the spool header line.
func (s *spool) msgSize() int64 { return s.size - s.body }

// message reads the message, without the spool header line (spamd).
func (s *spool) message() *io.SectionReader {
	return io.NewSectionReader(s.f, s.body, s.size-s.body)
}

// whole reads the whole file, spool header included: what clamd sees
// through FILDES, and therefore what INSTREAM and mksd get too, so that
// every antivirus transport scans the same bytes. (The original handed
// clamd the file's path: its scanners saw the header too.)
func (s *spool) whole() *io.SectionReader {
	return io.NewSectionReader(s.f, 0, s.size)
}
