package session

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
)

// spool is where the worker makes its spool files. spool_path is the
// session worker's root directory, so files are made by name in its root
// and no descriptor of a directory outside the root is held. A worker
// that is not root (and so not chrooted) makes them under spool_path.
type spool struct {
	dir  string // where files are opened: "/" when chrooted into spool_path
	host string // spool_path as the host names it, for logs and lockd
	perm os.FileMode
	err  error // why there is no spool
}

// spoolDir is spool_path on the host: under chroot_path, when that is set,
// as 1.4 had it.
func spoolDir(cfg *config.Config) string {
	if cfg.SpoolPath == "" || cfg.ChrootPath == "" {
		return cfg.SpoolPath
	}
	return filepath.Join(cfg.ChrootPath, cfg.SpoolPath)
}

// prepareSpool creates (as root, for uid/gid) the spool directory when it
// is missing, and checks it is a directory. It runs before the chroot.
func prepareSpool(path string, perm uint32, uid, gid int) *spool {
	if path == "" {
		return &spool{err: errors.New("spool_path is not set")}
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		// Missing parents are made as system directories (0755): other
		// processes of set_user pass through them (lock_path beside it).
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.Mkdir(path, 0o750); err == nil && os.Geteuid() == 0 && uid >= 0 {
			os.Chown(path, uid, gid)
		}
	}
	fi, err := os.Stat(path)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory", path)
	}
	if err != nil {
		return &spool{err: fmt.Errorf("spool_path: %w", err)}
	}
	return &spool{dir: path, host: path, perm: os.FileMode(perm)}
}

// chrooted records that the worker's root is now the spool directory.
func (s *spool) chrooted() {
	if s.err == nil {
		s.dir = "/"
	}
}

// spoolFile is one message's spool file. Errors are kept, not returned,
// so the message keeps flowing to the MTA; the session looks at err
// before the final dot. A nil *spoolFile is a message that is not
// spooled (no scanner reads it); its methods do nothing.
type spoolFile struct {
	s    *spool
	name string
	f    *os.File
	// ro is the same file open read-only, made with it: what the scanner
	// gets (a descriptor of its own, with its own offset), ready before
	// the final dot.
	ro  *os.File
	err error
	// max is the most message bytes the file holds (spool_max_size): a
	// longer message is not scanned, and its file goes as soon as it is
	// too long. n counts the message bytes written.
	max, n int64
	// dropped: the message outgrew max; the file is gone.
	dropped bool
}

// path is where the worker opens the file.
func (sp *spoolFile) path() string { return filepath.Join(sp.s.dir, sp.name) }

// hostPath is the file's name on the host, for logs and lockd.
func (sp *spoolFile) hostPath() string {
	if sp == nil || sp.s == nil || sp.name == "" {
		return ""
	}
	return filepath.Join(sp.s.host, sp.name)
}

// create makes the spool file of the session's current transaction and
// writes its first line, the spool header. The file is new (O_EXCL) and
// never a link followed (O_NOFOLLOW).
func (s *spool) create(c *conn) (*spoolFile, error) {
	sp := &spoolFile{s: s}
	if s.err != nil {
		sp.err = s.err
		return sp, s.err
	}
	base := fmt.Sprintf("%d.%d", c.start.Unix(), c.id)
	for i := 0; ; i++ {
		sp.name = base
		if i > 0 {
			sp.name = fmt.Sprintf("%s.%d", base, i)
		}
		f, err := openFile(sp.path(), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, s.perm)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			sp.err = fmt.Errorf("create %s: %w", sp.hostPath(), err)
			return sp, sp.err
		}
		f.Chmod(s.perm) // open(2) applies the umask
		sp.f = f
		break
	}
	ro, err := openFile(sp.path(), unix.O_RDONLY, 0)
	if err != nil {
		sp.err = fmt.Errorf("open %s read-only: %w", sp.hostPath(), err)
		sp.remove()
		return sp, sp.err
	}
	sp.ro = ro
	// trns: the transactions before this one, as in 1.4, which made the
	// file before the MTA's 354 counted the message.
	sp.writeRaw(fmt.Appendf(nil, "%s: src=%v, ident=%s, dst=%v, trns=%d\r\n", c.cfg.SpoolHeader, c.src, c.ident, c.dst, max(c.trns.Load()-1, 0)))
	return sp, sp.err
}

// write appends message bytes to the spool file. A message that grows
// past max loses its file at once. A file that cannot be written (a full
// disk, EFBIG) is removed at once too, whatever spool_leave_on says: a
// partial file is of no use to anyone, and one left on a full disk would
// fail every later message. The first error sticks.
func (sp *spoolFile) write(b []byte) {
	if sp == nil || sp.f == nil || sp.err != nil || len(b) == 0 {
		return
	}
	sp.n += int64(len(b))
	if sp.max > 0 && sp.n > sp.max {
		sp.dropped = true
		sp.remove()
		return
	}
	sp.writeRaw(b)
}

// writeRaw writes b; on an error the file is removed and err set.
func (sp *spoolFile) writeRaw(b []byte) {
	if _, err := sp.f.Write(b); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // named below as the host names it
		}
		sp.err = fmt.Errorf("write %s: %w", sp.hostPath(), err)
		sp.remove()
	}
}

// keep closes the spool file, and removes it unless leave says otherwise.
func (sp *spoolFile) keep(leave bool) {
	if sp == nil || sp.f == nil {
		return
	}
	sp.f.Close()
	sp.f = nil
	if sp.ro != nil {
		sp.ro.Close()
		sp.ro = nil
	}
	if !leave {
		os.Remove(sp.path())
	}
}

// remove closes and removes the spool file.
func (sp *spoolFile) remove() { sp.keep(false) }

// readOnly is the spool file open read-only, for the scanner. It stays
// the spool file's: the caller does not close it.
func (sp *spoolFile) readOnly() (*os.File, error) {
	if sp == nil || sp.ro == nil {
		return nil, errors.New("no spool file")
	}
	return sp.ro, nil
}

// openFile opens path, never following a link, close-on-exec. A regular
// file is never ready or not ready, so the descriptor is left blocking
// and out of the runtime's poller (os.OpenFile would try to add it, and
// then take it out again, four system calls per file).
func openFile(path string, flags int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm))
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}
