package resource

import "golang.org/x/sys/unix"

// OpenBSD has no RLIMIT_AS: limit_virt_size is reported as not applied.
const (
	rlimitCore  = unix.RLIMIT_CORE
	rlimitAS    = -1
	rlimitData  = unix.RLIMIT_DATA
	rlimitFsize = unix.RLIMIT_FSIZE
)

func getrlimit(resource int) (cur, max uint64, err error) {
	var rl unix.Rlimit
	err = unix.Getrlimit(resource, &rl)
	return rl.Cur, rl.Max, err
}

func setrlimit(resource int, cur, max uint64) error {
	return unix.Setrlimit(resource, &unix.Rlimit{Cur: cur, Max: max})
}
