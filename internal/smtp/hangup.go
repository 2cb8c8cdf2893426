package smtp

import (
	"io"
	"net"
	"time"
)

// HangUp ends a connection the proxy refuses, after its last reply: it
// sends FIN, then reads (for at most 2 s and 64 KiB) what the client
// still sends, so that closing the socket with unread data does not reset
// the connection and lose the reply. The caller closes c.
func HangUp(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 64*1024))
}
