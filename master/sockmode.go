package master

import (
	"net"
	"sync"
	"syscall"
)

// umaskMu serialises the daemon's umask changes.
var umaskMu sync.Mutex

// listenUnixMode listens on a new unix socket at path, created with mode
// 0777 less mask. It runs at start-up, before master opens any other file.
func listenUnixMode(path string, mask int) (*net.UnixListener, error) {
	umaskMu.Lock()
	defer umaskMu.Unlock()
	old := syscall.Umask(mask)
	defer syscall.Umask(old)
	return net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
}
