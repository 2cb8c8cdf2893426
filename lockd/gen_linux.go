//go:build linux

package lockd

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
)

// genSize is the size of the generation page.
const genSize = 4096

// newGeneration makes the generation page: a memfd lockd maps for
// writing, then seals so that no one can write it any other way, nor
// shrink it under a worker's mapping (which would kill the worker with
// SIGBUS). Its descriptor is what the workers get.
func newGeneration() (*generation, error) {
	fd, err := unix.MemfdCreate("smtp-gated-lockd-generation", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	fail := func(what string, err error) (*generation, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("generation page: %s: %w", what, err)
	}
	if err := unix.Ftruncate(fd, genSize); err != nil {
		return fail("ftruncate", err)
	}
	mem, err := unix.Mmap(fd, 0, genSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Munmap(mem)
		return fail("seals", err)
	}
	// The mapping lives as long as lockd.
	return &generation{p: (*uint64)(unsafe.Pointer(&mem[0])), beat: (*int64)(unsafe.Pointer(&mem[8])),
		fd: fd, size: genSize}, nil
}

// monoNow is CLOCK_MONOTONIC in nanoseconds: the workers read the same
// clock.
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// pending changes the generation when inotify holds events not read yet:
// whatever they are, something changed in lock_path.
func (w *lockWatch) pending() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wd < 0 {
		return
	}
	// TIOCINQ is FIONREAD: the bytes of events waiting.
	if n, err := unix.IoctlGetInt(w.fd, unix.TIOCINQ); err == nil && n > 0 {
		w.gen.bump()
	}
}

// watchMask is every change in lock_path that can turn an unlocked client
// into a locked one: a file made, removed or renamed, written, touched or
// given to another owner; and the directory itself going away.
const watchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
	unix.IN_ATTRIB | unix.IN_MODIFY | unix.IN_CLOSE_WRITE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// lockWatch watches lock_path with inotify: every change there changes
// the generation, and while lock_path is not watched the workers keep
// nothing.
type lockWatch struct {
	gen *generation
	log *logx.Logger
	fd  int
	f   *os.File

	mu      sync.Mutex
	wd      int    // the watch; -1: none
	path    string // what it watches, or should
	lastErr string // the last failure logged
	dead    bool   // the inotify descriptor failed: never watched again
}

// newLockWatch starts reading inotify events for gen; nil when inotify
// cannot be had (logged): the workers then ask every time.
func newLockWatch(gen *generation, log *logx.Logger) *lockWatch {
	if gen == nil {
		return nil
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		log.Warningf("inotify: %v: session workers will ask lockd for every session", err)
		return nil
	}
	w := &lockWatch{gen: gen, log: log, fd: fd, f: os.NewFile(uintptr(fd), "inotify"), wd: -1}
	go w.read()
	return w
}

// watch makes the watch follow cfg: lock_path when locking is on, nothing
// otherwise. A watch that could not be made is tried again at the next
// call (the sweeper calls it).
func (w *lockWatch) watch(cfg *config.Config) {
	if w == nil {
		return
	}
	want := ""
	if cfg.Locking() {
		want = cfg.LockPath
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead || (w.wd >= 0 && w.path == want) {
		return
	}
	if w.wd >= 0 {
		unix.InotifyRmWatch(w.fd, uint32(w.wd))
		w.wd = -1
	}
	w.gen.disable()
	w.path = want
	if want == "" {
		return
	}
	wd, err := unix.InotifyAddWatch(w.fd, want, watchMask)
	if err != nil {
		if msg := err.Error(); msg != w.lastErr {
			w.lastErr = msg
			w.log.Warningf("lock_path %s: inotify: %v: session workers will ask lockd for every session until it is watched", want, err)
		}
		return
	}
	if w.lastErr != "" {
		w.log.Noticef("lock_path %s is watched again", want)
	}
	w.wd, w.lastErr = wd, ""
	// Anything made before the watch is read from the disk by the
	// answers to come: only they may be kept.
	w.gen.enable()
}

// read handles the events for as long as lockd lives: one change of the
// generation per batch of events, and none kept while the directory is
// not watched.
func (w *lockWatch) read() {
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			w.log.Errf("inotify: %v: session workers will ask lockd for every session", err)
			w.mu.Lock()
			w.wd, w.dead = -1, true
			w.gen.disable()
			w.mu.Unlock()
			return
		}
		changed, lost := false, false
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			wd := int(int32(binary.NativeEndian.Uint32(buf[off:])))
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			switch {
			case mask&unix.IN_Q_OVERFLOW != 0:
				changed = true // what was lost were changes too
			case wd != w.wd:
				// A watch removed for a new lock_path.
			case mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0:
				lost = true
			default:
				changed = true
			}
		}
		if lost {
			unix.InotifyRmWatch(w.fd, uint32(w.wd))
			w.wd = -1
			w.gen.disable()
			w.log.Warningf("lock_path %s went away: session workers ask lockd for every session until it is back", w.path)
		} else if changed {
			w.gen.bump()
		}
		w.mu.Unlock()
	}
}
