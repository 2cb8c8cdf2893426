package ipc

import (
	"fmt"
	"net"
	"time"
)

// Control sends one command to the daemon's control socket at path and
// returns its reply.
func Control(path, command string, args []string) (*CtlReply, error) {
	c, err := net.DialTimeout("unixpacket", path, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w (is smtp-gated running?)", path, err)
	}
	uc := c.(*net.UnixConn)
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(60 * time.Second))
	conn := FromUnixConn(uc)
	if err := conn.Send(MsgCtlRequest, 1, false, &CtlRequest{Version: Version, Command: command, Args: args}); err != nil {
		return nil, err
	}
	m, err := conn.Recv()
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer m.Close()
	r, ok := m.Payload.(*CtlReply)
	if !ok || !m.Reply || m.ID != 1 {
		return nil, fmt.Errorf("control socket %s: %w: unexpected %v", path, ErrMalformed, m.Type)
	}
	return r, nil
}
