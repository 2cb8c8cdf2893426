package scanner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// mksd is a client of mks_vir's mksd daemon: a unix stream socket
// (antivirus_path), one request line "S<absolute path>\n", one answer line.
//
// mksd reads the file by path. The spool file is in general not readable by
// path from here (a chrooted session wrote it), so the message is copied
// into a file of this process's own, in tempDir, named there and removed
// after the answer. The copy has mode spool_perm (default 0660), as the
// original's spool files had: mksd must run as root or be in set_group, the
// same set-up the original asked for.
type mksd struct {
	addr    string
	timeout time.Duration // timeout_scanner: the exchange (the local copy comes first)
	tempDir func() (string, error)
	perm    os.FileMode
}

func (m *mksd) name() string { return "mksd" }

func (m *mksd) scan(ctx context.Context, sp *spool) (found bool, name string, err error) {
	if !strings.HasPrefix(m.addr, "/") {
		return false, "", fmt.Errorf("antivirus_path %q: mksd listens on a unix socket, give its path", m.addr)
	}
	path, err := m.copy(sp)
	if err != nil {
		return false, "", err
	}
	defer os.Remove(path)
	conn, err := dialScanner(ctx, m.addr, m.timeout)
	if err != nil {
		return false, "", err
	}
	defer conn.Close()
	// "S": scan. The original sends no other option letter.
	_, werr := io.WriteString(conn, "S"+path+"\n")
	reply, rerr := readClamdReply(conn) // one line, like clamd's
	if len(reply) == 0 {
		return false, "", exchangeError(m.addr, m.timeout, werr, rerr)
	}
	return parseMksdReply(reply)
}

// copy writes the whole spool file into a new file in the private
// directory and returns its path.
func (m *mksd) copy(sp *spool) (string, error) {
	dir, err := m.tempDir()
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	f, err := os.CreateTemp(dir, "msg-")
	if err != nil {
		return "", fmt.Errorf("temporary file: %w", err)
	}
	path := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("temporary file: %w", err)
	}
	if err := f.Chmod(m.perm); err != nil {
		return fail(err)
	}
	if _, err := io.Copy(f, sp.whole()); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("temporary file: %w", err)
	}
	return path, nil
}

// parseMksdReply reads mksd's answer line: "OK ...", "CLN ..." and
// "DEL ..." are clean (as the original reads them), "VIR <name> ..." a
// virus, "ERR ..." a failure.
func parseMksdReply(b []byte) (found bool, name string, err error) {
	r := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if r == "" {
		return false, "", errors.New("empty answer")
	}
	if len(r) > maxReply || !printable(r) {
		return false, "", fmt.Errorf("unreadable answer %q", clip(r))
	}
	f := strings.Fields(r)
	if len(f) == 0 {
		return false, "", errors.New("empty answer")
	}
	switch f[0] {
	case "OK", "CLN", "DEL":
		return false, "", nil
	case "VIR":
		if len(f) > 1 {
			name = f[1]
		}
		return true, name, nil
	case "ERR":
		return false, "", fmt.Errorf("answered %q", clip(r))
	}
	return false, "", fmt.Errorf("unexpected answer %q", clip(r))
}
