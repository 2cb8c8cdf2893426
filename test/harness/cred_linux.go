package harness

import "syscall"

// passCred asks for the sender's credentials with every datagram.
func passCred(fd int) error {
	return syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
}

func credSpace() int { return syscall.CmsgSpace(syscall.SizeofUcred) }

// credPid is the sender's pid from a datagram's control data, 0 if none.
func credPid(oob []byte) int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}
