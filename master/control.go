package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"smtp-gated/internal/version"
	"smtp-gated/ipc"
)

// openControl creates the control socket for smtpgatectl. If another
// instance answers on it, this one refuses to start; a stale socket file
// is replaced.
func (m *master) openControl(path string) error {
	if path == "" {
		return nil
	}
	if c, err := net.DialTimeout("unixpacket", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another smtp-gated answers on it", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control socket: %w", err)
	}
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	// Anyone may ask for status; privileged commands check the caller's
	// credentials.
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	m.ctl, m.ctlPath = l, path
	return nil
}

func (m *master) closeControl() {
	if m.ctl != nil {
		m.ctl.Close()
	}
}

// serveControl answers smtpgatectl until the socket is closed.
func (m *master) serveControl() {
	if m.ctl == nil {
		return
	}
	for {
		uc, err := m.ctl.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Errf("control socket: %v", err)
			}
			return
		}
		go m.control(uc)
	}
}

// control answers one request.
func (m *master) control(uc *net.UnixConn) {
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(30 * time.Second))
	conn := ipc.FromUnixConn(uc)
	msg, err := conn.Recv()
	if err != nil {
		m.log.Warningf("control socket: %v", err)
		return
	}
	defer msg.Close()
	req, ok := msg.Payload.(*ipc.CtlRequest)
	if !ok || msg.Reply {
		m.log.Warningf("control socket: unexpected %v", msg.Type)
		return
	}
	uid, err := peerUID(uc)
	if err != nil {
		m.log.Warningf("control socket: peer credentials: %v", err)
		return
	}
	reply := m.command(req, uid)
	if err := conn.Send(ipc.MsgCtlReply, msg.ID, true, reply); err != nil {
		m.log.Debugf("control socket: %v", err)
	}
}

// Exit codes of smtpgatectl, as the reply carries them.
const (
	ctlOK     = 0
	ctlFailed = 1
	ctlUsage  = 2
	ctlDenied = 4
)

// command runs one control command for a caller with uid.
func (m *master) command(req *ipc.CtlRequest, uid int) *ipc.CtlReply {
	if req.Version != ipc.Version {
		return &ipc.CtlReply{Code: ctlFailed, Text: fmt.Sprintf("smtpgatectl speaks version %d, the daemon %d: use the smtpgatectl of the running daemon", req.Version, ipc.Version)}
	}
	privileged := map[string]bool{"reload": true, "stop": true}
	if privileged[req.Command] && uid != 0 && uid != os.Geteuid() {
		m.log.Warningf("control socket: %q refused for uid %d", req.Command, uid)
		return &ipc.CtlReply{Code: ctlDenied, Text: req.Command + ": permission denied (needs root)"}
	}
	switch req.Command {
	case "status":
		return &ipc.CtlReply{Code: ctlOK, Text: m.status()}
	case "reload", "stop":
		op := ctlOp{op: req.Command, done: make(chan error, 1)}
		select {
		case m.requests <- op:
		case <-m.quit:
			return &ipc.CtlReply{Code: ctlFailed, Text: "the daemon is stopping"}
		}
		if err := <-op.done; err != nil {
			return &ipc.CtlReply{Code: ctlFailed, Text: fmt.Sprintf("%s failed: %v", req.Command, err)}
		}
		if req.Command == "stop" {
			return &ipc.CtlReply{Code: ctlOK, Text: "stopping"}
		}
		return &ipc.CtlReply{Code: ctlOK, Text: "reloaded"}
	}
	return &ipc.CtlReply{Code: ctlUsage, Text: fmt.Sprintf("unknown command %q; commands: status, reload, stop", req.Command)}
}

// status is the text of `smtpgatectl status`.
func (m *master) status() string {
	var b strings.Builder
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(&b, "smtp-gated %s, pid %d\n", version.Version, os.Getpid())
	fmt.Fprintf(&b, "Start time: %s\n", m.started.Format(time.RFC1123))
	fmt.Fprintf(&b, "Restart time: %s\n", m.reloaded.Format(time.RFC1123))
	fmt.Fprintf(&b, "Uptime: %v\n", time.Since(m.started).Round(time.Second))
	fmt.Fprintf(&b, "Children: %d/%d (current/max)\n", len(m.sessions), m.maxConnections)
	fmt.Fprintf(&b, "Requests: %d/%d/%d (total/direct/empty)\n", m.count.requests, m.count.direct, m.count.empty)
	fmt.Fprintf(&b, "Rejects: %d/%d/%d (host/max/other)\n", m.count.rejectHost, m.count.rejectMax, m.count.rejectOther)
	for _, p := range m.allProcs() {
		state := "ready"
		if !p.ready {
			state = "starting"
		}
		fmt.Fprintf(&b, "Process: %-10s pid %-7d %-8s sessions %d restarts %d\n", p.String(), p.pid, state, p.sessions, p.restarts)
	}
	return b.String()
}
