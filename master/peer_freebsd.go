package master

import "golang.org/x/sys/unix"

func getpeereid(fd int) (int, error) {
	x, err := unix.GetsockoptXucred(fd, unix.SOL_LOCAL, unix.LOCAL_PEERCRED)
	if err != nil {
		return -1, err
	}
	return int(x.Uid), nil
}
