package master

import (
	"fmt"

	"smtp-gated/ipc"
)

// fromChild is master's dispatch of messages from its children. What a
// message is about goes to admission (the sessions) or to the
// supervisor (the processes); a message a child may not send ends that
// child.
func (m *master) fromChild(p *proc, pe *ipc.Peer, msg *ipc.Msg) {
	switch v := msg.Payload.(type) {
	case *ipc.SessionEnd:
		if p.role == ipc.RoleSession {
			if !m.adm.endSession(p, v) {
				msg.Close()
				m.sup.breach(p, pe, fmt.Sprintf("end of session %d, which is not its own", v.ID))
			}
			return
		}
	case *ipc.SessionAsk:
		if p.role == ipc.RoleLockd {
			m.sessionAsk(pe, msg, v)
			return
		}
	case *ipc.Breach:
		if p.role == ipc.RoleLockd {
			m.lockdBreach(v)
			return
		}
	case *ipc.SessionTaken:
		if p.role == ipc.RoleSession && m.adm.taken(p, v.ID) {
			return
		}
	case *ipc.SpoofQuery:
		if p.role == ipc.RoleSession {
			m.spoof(p, pe, msg, v)
			return
		}
	case *ipc.IdentQuery:
		if p.role == ipc.RoleSession {
			m.identQuery(p, pe, msg, v)
			return
		}
	}
	msg.Close()
	if p.role == ipc.RoleSession {
		m.sup.breach(p, pe, fmt.Sprintf("unexpected %v", msg.Type))
		return
	}
	m.log.Errf("unexpected %v from %v: killing it", msg.Type, p)
	m.sup.kill(p, pe)
}
