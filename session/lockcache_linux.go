//go:build linux

package session

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mapGeneration maps lockd's generation page read-only. The page must be
// sealed against shrinking (a smaller file would kill the worker with
// SIGBUS on reading) and against writing by anyone but lockd. The
// generation is its first word, lockd's heartbeat the second. The mapping
// is never undone: a goroutine may be reading it when the link ends. One
// page is what a restart of lockd costs a worker.
func mapGeneration(f *os.File, size int) (gen *uint64, beat *int64, err error) {
	if f == nil {
		return nil, nil, errors.New("no descriptor")
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var mem []byte
	var merr error
	err = rc.Control(func(fd uintptr) {
		var st unix.Stat_t
		if merr = unix.Fstat(int(fd), &st); merr != nil {
			return
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < 16 || int64(size) != st.Size {
			merr = fmt.Errorf("size %d, %d said: not a generation page", st.Size, size)
			return
		}
		seals, err := unix.FcntlInt(fd, unix.F_GET_SEALS, 0)
		if err != nil {
			merr = fmt.Errorf("seals: %w", err)
			return
		}
		if want := unix.F_SEAL_SHRINK | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL; seals&want != want {
			merr = fmt.Errorf("seals %#x: not sealed against shrinking and writing", seals)
			return
		}
		mem, merr = unix.Mmap(int(fd), 0, 16, unix.PROT_READ, unix.MAP_SHARED)
	})
	if err == nil {
		err = merr
	}
	if err != nil {
		return nil, nil, err
	}
	return (*uint64)(unsafe.Pointer(&mem[0])), (*int64)(unsafe.Pointer(&mem[8])), nil
}

// monoNow is CLOCK_MONOTONIC in nanoseconds, the clock of lockd's
// heartbeat.
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
