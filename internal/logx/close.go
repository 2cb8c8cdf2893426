package logx

import (
	"fmt"
	"net/netip"
)

// Close is what the CLOSE line of a session says. Master (for a session
// it refused or lost) and the session workers write it with Line, so
// that a log watcher reads one format.
type Close struct {
	Direct      bool // CLOSE:DIRECT: the session ended as a direct proxy
	By          string
	ClientRx    uint64
	ServerRx    uint64
	Trns, Rcpts int64
	Auth        int64
	Secs        int64
	Src         netip.AddrPort
	Ident       string
	ID          uint64
}

// Line is the CLOSE line: 1.4's fields in 1.4's order (CLOSE:DIRECT had
// its own, without the comma after by=), then the client's port and the
// session's id.
func (c *Close) Line() string {
	if c.Direct {
		return fmt.Sprintf("CLOSE:DIRECT by=%s rcv=%d/%d, time=%d, src=%v, ident=%s, trns=%d, rcpts=%d, auth=%d, src_port=%d, id=%d",
			c.By, c.ClientRx, c.ServerRx, c.Secs, c.Src.Addr(), c.Ident, c.Trns, c.Rcpts, c.Auth, c.Src.Port(), c.ID)
	}
	return fmt.Sprintf("CLOSE by=%s, rcv=%d/%d, trns=%d, rcpts=%d, auth=%d, time=%d, src=%v, ident=%s, src_port=%d, id=%d",
		c.By, c.ClientRx, c.ServerRx, c.Trns, c.Rcpts, c.Auth, c.Secs, c.Src.Addr(), c.Ident, c.Src.Port(), c.ID)
}
