package session

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// spool is the worker's handle on spool_path, opened before the worker
// changed its root: files are made relative to it (openat), so the
// directory needs no place inside the chroot.
type spool struct {
	root *os.Root
	perm os.FileMode
	err  error // why there is no root
}

// openSpool opens (and, as root, creates for uid/gid) the spool directory.
func openSpool(path string, perm uint32, uid, gid int) *spool {
	if path == "" {
		return &spool{err: errors.New("spool_path is not set")}
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(path, 0o750); err == nil && os.Geteuid() == 0 && uid >= 0 {
			os.Chown(path, uid, gid)
		}
	}
	r, err := os.OpenRoot(path)
	if err != nil {
		return &spool{err: fmt.Errorf("spool_path: %w", err)}
	}
	return &spool{root: r, perm: os.FileMode(perm)}
}

// spoolFile is one message's spool file. Errors are kept, not returned,
// so the message keeps flowing to the MTA; the session looks at err
// before the final dot.
type spoolFile struct {
	root *os.Root
	name string
	f    *os.File
	err  error
}

// create makes the spool file of the session's current transaction and
// writes its first line, the spool header.
func (s *spool) create(c *conn) (*spoolFile, error) {
	sp := &spoolFile{root: s.root}
	if s.root == nil {
		sp.err = s.err
		return sp, s.err
	}
	base := fmt.Sprintf("%d.%d", c.start.Unix(), c.id)
	for i := 0; ; i++ {
		sp.name = base
		if i > 0 {
			sp.name = fmt.Sprintf("%s.%d", base, i)
		}
		f, err := s.root.OpenFile(sp.name, os.O_RDWR|os.O_CREATE|os.O_EXCL, s.perm)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			sp.err = fmt.Errorf("create %s: %w", filepath.Join(s.root.Name(), sp.name), err)
			return sp, sp.err
		}
		f.Chmod(s.perm) // open(2) applies the umask
		sp.f = f
		break
	}
	sp.write(fmt.Appendf(nil, "%s: src=%v, ident=%s, dst=%v, trns=%d\r\n", c.cfg.SpoolHeader, c.src, c.ident, c.dst, c.trns.Load()))
	return sp, nil
}

// write appends to the spool file; the first error sticks.
func (sp *spoolFile) write(b []byte) {
	if sp == nil || sp.f == nil || sp.err != nil || len(b) == 0 {
		return
	}
	if _, err := sp.f.Write(b); err != nil {
		sp.err = err
	}
}

// keep closes the spool file, and removes it unless leave says otherwise.
func (sp *spoolFile) keep(leave bool) {
	if sp == nil || sp.f == nil {
		return
	}
	sp.f.Close()
	sp.f = nil
	if !leave {
		sp.root.Remove(sp.name)
	}
}

// remove closes and removes the spool file.
func (sp *spoolFile) remove() { sp.keep(false) }
