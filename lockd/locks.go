package lockd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
)

// A lock is a file <lock_path>/<client file name> (see client.fileName)
// that belongs to lockd's user. Its first line is the cause (as 1.4
// wrote it: the virus name, or action_script's FOUND word; or what
// `smtpgatectl lock` was given); a lock made with an
// explicit duration has a second line, "until UNIXTIME" or "until
// forever". Any other lock lasts lock_duration seconds from the file's
// modification time (-1: until removed), so a change of lock_duration
// applies to the locks that exist.
//
// A file there that belongs to another user is an administrator's: it is
// never a lock, never removed, and it keeps its client from being locked.
// A file for the address alone also covers every ident of that address.

// lockFile is what one file of lock_path says.
type lockFile struct {
	client client
	path   string
	owner  int
	mtime  time.Time
	cause  string
	// until: when the file gave its own end (zero: lock_duration's);
	// forever: it said "until forever".
	until   time.Time
	forever bool
}

// maxLockRead bounds what is read of a lock file.
const maxLockRead = 512

// statLock reads the lock file of c, if there is one.
func (s *server) statLock(cfg *config.Config, c client) (*lockFile, error) {
	path := filepath.Join(cfg.LockPath, c.fileName())
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	l := &lockFile{client: c, path: path, owner: int(st.Uid),
		mtime: time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec))}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return l, nil
	}
	// Read without following a link, and without blocking on a FIFO
	// (the type was checked, but the name may have changed since).
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if l.owner != s.uid {
			return l, nil // an administrator's file we may not read: still his
		}
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxLockRead))
	f.Close()
	first, rest, _ := bytes.Cut(b, []byte("\n"))
	l.cause = printable(string(first))
	if until, ok := strings.CutPrefix(string(bytes.TrimRight(rest, "\n")), "until "); ok {
		if until == "forever" {
			l.forever = true
		} else if n, err := strconv.ParseInt(until, 10, 64); err == nil {
			l.until = time.Unix(n, 0)
		}
	}
	return l, nil
}

// printable is s with anything but printable ASCII replaced by '?'.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// admin reports whether l is an administrator's file.
func (s *server) admin(l *lockFile) bool { return l.owner != s.uid }

// expires is when lock l ends; ok is false for a lock that does not end.
func (l *lockFile) expires(cfg *config.Config) (t time.Time, ok bool) {
	switch {
	case l.forever:
		return time.Time{}, false
	case !l.until.IsZero():
		return l.until, true
	case cfg.LockDuration < 0:
		return time.Time{}, false
	}
	return l.mtime.Add(time.Duration(cfg.LockDuration) * time.Second), true
}

func (l *lockFile) expired(cfg *config.Config, now time.Time) bool {
	t, ok := l.expires(cfg)
	return ok && !now.Before(t)
}

// lockNames are the files that lock client c, or protect it: its
// address's and, with an ident, its own.
func lockNames(c client) []client {
	if c.ident == "" {
		return []client{c}
	}
	return []client{c.hostOnly(), c}
}

// lockState tells whether c is locked, removing the expired locks it
// meets. An administrator's file for the client (its address's, or its
// own) protects it: a lock made before that file was put there does not
// count. Called with the client's key locked.
func (s *server) lockState(cfg *config.Config, c client, now time.Time) (locked bool, cause string, err error) {
	var valid *lockFile
	for _, n := range lockNames(c) {
		l, err := s.statLock(cfg, n)
		if err != nil {
			return false, "", err
		}
		switch {
		case l == nil:
		case s.admin(l):
			return false, "", nil
		case l.expired(cfg, now):
			s.removeExpired(l)
		case valid == nil:
			valid = l
		}
	}
	if valid == nil {
		return false, "", nil
	}
	return true, valid.cause, nil
}

// removeExpired removes an expired lock of lockd's.
func (s *server) removeExpired(l *lockFile) {
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Errf("expired lock %s: %v", l.path, err)
		return
	}
	s.log.Eventf(logx.Info, "LOCK:EXPIRED src=%v, ident=%s, cause=%s, since=%s",
		l.client.addr, identOrDash(l.client.ident), l.cause, l.mtime.Format(time.DateTime))
}

// lockResult is what makeLock did.
type lockResult struct {
	created bool
	path    string // the lock file (made or found)
	// protector is the administrator's file that keeps the client from
	// being locked ("" when none does).
	protector *lockFile
}

// makeLock locks client c for cause, unless an administrator's file
// protects it or it is locked already. until and forever are the lock's
// own end (zero and false: lock_duration). Called with the client's key
// locked.
func (s *server) makeLock(cfg *config.Config, c client, cause string, until time.Time, forever bool, now time.Time) (lockResult, error) {
	for _, n := range lockNames(c) {
		l, err := s.statLock(cfg, n)
		if err != nil {
			return lockResult{}, err
		}
		if l != nil && s.admin(l) {
			return lockResult{path: l.path, protector: l}, nil
		}
	}
	path := filepath.Join(cfg.LockPath, c.fileName())
	content := lockContent(cause, until, forever)
	for range 3 {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, os.FileMode(cfg.LockPerm)&os.ModePerm)
		if err == nil {
			_, err = f.Write(content)
			if err == nil {
				// open(2) applies the umask.
				err = f.Chmod(os.FileMode(cfg.LockPerm) & os.ModePerm)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(path)
				return lockResult{}, fmt.Errorf("lock file %s: %w", path, err)
			}
			return lockResult{created: true, path: path}, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return lockResult{}, fmt.Errorf("lock file %s: %w", path, err)
		}
		l, serr := s.statLock(cfg, c)
		switch {
		case serr != nil:
			return lockResult{}, serr
		case l == nil:
			continue // gone meanwhile
		case s.admin(l):
			return lockResult{path: path, protector: l}, nil
		case l.expired(cfg, now):
			s.removeExpired(l)
			continue
		}
		return lockResult{path: path}, nil // locked already
	}
	return lockResult{}, fmt.Errorf("lock file %s: keeps changing", path)
}

func lockContent(cause string, until time.Time, forever bool) []byte {
	b := []byte(logx.Escape(cause) + "\n")
	switch {
	case forever:
		b = append(b, "until forever\n"...)
	case !until.IsZero():
		b = fmt.Appendf(b, "until %d\n", until.Unix())
	}
	return b
}

// sweepLocks removes the expired locks of lock_path: the manual's cron
// job, done by the daemon.
func (s *server) sweepLocks(cfg *config.Config, now time.Time) {
	ents, err := os.ReadDir(cfg.LockPath)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warningf("lock_path %s: %v", cfg.LockPath, err)
		}
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			s.removeStaleTemp(cfg.LockPath, name, now)
			continue
		}
		c, ok := parseFileName(name)
		if !ok {
			continue
		}
		unlock := s.keys.lock(c.addr)
		if l, err := s.statLock(cfg, c); err == nil && l != nil && !s.admin(l) && l.expired(cfg, now) {
			s.removeExpired(l)
		}
		unlock()
	}
}

// removeStaleTemp removes a temporary file a killed lockd left behind.
func (s *server) removeStaleTemp(dir, name string, now time.Time) {
	path := filepath.Join(dir, name)
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || int(st.Uid) != s.uid {
		return
	}
	if now.Sub(time.Unix(int64(st.Mtim.Sec), 0)) > time.Minute {
		os.Remove(path)
	}
}

// listLocks lists the files of lock_path that are about a client.
func (s *server) listLocks(cfg *config.Config) ([]*lockFile, error) {
	ents, err := os.ReadDir(cfg.LockPath)
	if err != nil {
		return nil, err
	}
	var out []*lockFile
	for _, e := range ents {
		c, ok := parseFileName(e.Name())
		if !ok {
			continue
		}
		if l, err := s.statLock(cfg, c); err == nil && l != nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// ownerName is the user name of uid, or the number.
func ownerName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}
