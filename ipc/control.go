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
	serr := conn.Send(MsgCtlRequest, 1, false, &CtlRequest{Version: Version, Command: command, Args: args})
	if serr != nil {
		// A daemon with all its control connections busy answers a
		// refusal at once and closes: read it rather than the
		// send's broken pipe.
		uc.SetReadDeadline(time.Now().Add(time.Second))
	}
	m, err := conn.Recv()
	if err != nil {
		if serr != nil {
			return nil, serr
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer m.Close()
	r, ok := m.Payload.(*CtlReply)
	if ok && m.Reply && m.ID == RefusalID {
		return r, nil
	}
	if !ok || !m.Reply || m.ID != 1 || serr != nil {
		return nil, fmt.Errorf("control socket %s: %w: unexpected %v", path, ErrMalformed, m.Type)
	}
	return r, nil
}

// RefusalID is the id of the CtlReply the daemon sends, unasked, on a
// control connection it does not serve (too many are open): the reply's
// Text, one line, says why.
const RefusalID = 0

// RefusalPacket is the packet of the refusal of a control connection: a
// CtlReply with RefusalID, which the daemon writes as is on a socket it
// accepted and will not serve; smtpgatectl exits with CtlNoDaemon.
func RefusalPacket(text string) ([]byte, error) {
	return encodePacket(MsgCtlReply, RefusalID, true, &CtlReply{Code: CtlNoDaemon, Text: text})
}
