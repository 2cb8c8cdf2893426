package master

import (
	"fmt"
	"net/netip"
	"os"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// Modes tproxy and tproxy,netfilter: the listener takes connections to
// any address (IP_TRANSPARENT), and the connection to the MTA leaves from
// the client's own address and port. Binding a socket to an address that
// is not the host's needs privilege, so master creates and binds the
// socket and the session worker connects it.

// spoof answers a session worker's SpoofQuery. A worker asking for
// another address than its own session's client is not trusted further:
// it is killed, like any worker that breaks the protocol.
func (m *master) spoof(p *proc, pe *ipc.Peer, msg *ipc.Msg, q *ipc.SpoofQuery) {
	cfg := m.cfg.Load()
	src, ok := m.adm.clientOf(p, q.ID)
	if !ok || src != q.Client || !cfg.Spoofs(q.Client.Addr()) {
		msg.Close()
		m.sup.breach(p, pe, fmt.Sprintf("asked for a socket bound to %v for session %d, which is not its client's", q.Client, q.ID))
		return
	}
	fd, err := spoofSocket(q.Client)
	if err != nil {
		m.log.Errf("[%d] outgoing socket from %v: %v", q.ID, q.Client, err)
		if err := pe.Reply(msg, ipc.MsgSpoofSocket, &ipc.SpoofSocket{Err: err.Error()}); err != nil {
			m.log.Debugf("reply to %v: %v", p, err)
		}
		return
	}
	defer closeFD(fd)
	if err := pe.Reply(msg, ipc.MsgSpoofSocket, &ipc.SpoofSocket{}, fd); err != nil {
		m.log.Debugf("reply to %v: %v", p, err)
	}
}

// natDevice opens the device the lookup process asks about NAT state in
// modes pf and ipfilter, while master is still root; it is passed to
// every lookup process on child.NatDevFD.
func natDevice(mode config.Mode) (*os.File, error) {
	path := mode.NATDevice()
	if path == "" {
		return nil, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("mode %v: %w", mode, err)
	}
	return f, nil
}

// extraFiles are the descriptors a child gets after its link to master
// (child.LinkFD): the NAT device for lookup, on child.NatDevFD.
func (s *supervisor) extraFiles(p *proc) []*os.File {
	if p.role == ipc.RoleLookup && s.natDev != nil {
		return []*os.File{s.natDev}
	}
	return nil
}

// The NAT device follows the link in ExtraFiles.
var _ = [1]struct{}{}[child.NatDevFD-child.LinkFD-1]

// clientOf is the client of session id when the session is worker p's.
func (a *admission) clientOf(p *proc, id uint64) (netip.AddrPort, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[id]
	if !ok || s.worker != p {
		return netip.AddrPort{}, false
	}
	return s.src, true
}
