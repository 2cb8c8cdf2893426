package resource

import "golang.org/x/sys/unix"

const (
	rlimitCore  = unix.RLIMIT_CORE
	rlimitAS    = unix.RLIMIT_AS
	rlimitData  = unix.RLIMIT_DATA
	rlimitFsize = unix.RLIMIT_FSIZE
)

// FreeBSD's rlim_t is signed; RLIM_INFINITY is its largest value.
func getrlimit(resource int) (cur, max uint64, err error) {
	var rl unix.Rlimit
	err = unix.Getrlimit(resource, &rl)
	return uint64(rl.Cur), uint64(rl.Max), err
}

func setrlimit(resource int, cur, max uint64) error {
	return unix.Setrlimit(resource, &unix.Rlimit{Cur: clamp(cur), Max: clamp(max)})
}

func clamp(v uint64) int64 {
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}
