package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// listen opens the listening socket with connect_queue as its backlog
// (see backlog: 0 is the system's maximum).
func listen(addr netip.Addr, port uint16, queue int) (*net.TCPListener, error) {
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
	}
	ap := netip.AddrPortFrom(addr, port)
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(port), Addr: addr.As16()}
	if addr.Unmap().Is4() {
		family = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(port), Addr: addr.Unmap().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("listen on %v: %w", ap, err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	defer f.Close()
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, fmt.Errorf("listen on %v: SO_REUSEADDR: %w", ap, err)
	}
	if family == unix.AF_INET6 && addr.IsUnspecified() {
		// [::] takes IPv4 clients too, as the manual's 0.0.0.0 would.
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("listen on %v: bind: %w", ap, err)
	}
	if err := unix.Listen(fd, backlog(queue)); err != nil {
		return nil, fmt.Errorf("listen on %v: %w", ap, err)
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen on %v: %w", ap, err)
	}
	return l.(*net.TCPListener), nil
}

// acceptLoop accepts until the listener is closed.
func (m *master) acceptLoop() {
	for {
		c, err := m.listener.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				d := time.Duration(m.cfg.Load().EnfileSleep) * time.Second
				if d <= 0 {
					d = 100 * time.Millisecond // enfile_sleep 0: no busy loop
				}
				m.log.Errf("accept: %v: pausing %v", err, d)
				time.Sleep(d)
				continue
			}
			m.log.Errf("accept: %v", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		m.admit(c)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// admit applies the global limits to a new connection and hands it to the
// least-loaded session worker. The counts are taken and updated under one
// lock, so they are exact whatever the number of workers.
func (m *master) admit(c *net.TCPConn) {
	cfg := m.cfg.Load()
	src, local := addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
	m.mu.Lock()
	m.nextID++
	id := m.nextID
	m.count.requests++
	total, host := len(m.sessions), m.perHost[src.Addr()]
	var by, text string
	code := 554
	var w *proc
	switch {
	case m.draining:
		by, code, text = "shutdown", 421, cfg.MsgTempUnavail
	case m.maxConnections > 0 && total >= m.maxConnections:
		by, text = "maxconn", cfg.MsgMaxReached
		m.count.rejectMax++
	case cfg.MaxPerHost > 0 && uint64(host) >= cfg.MaxPerHost:
		by, text = "maxhost", cfg.MsgMaxPerHost
		m.count.rejectHost++
	case m.overLoad(cfg):
		by, text = "load", cfg.MsgSystemLoad
	default:
		// A worker that does not keep up (its queue full, too many
		// sessions not taken, its heartbeat late) is passed over.
		w = m.pickWorker(nil)
		if w == nil {
			by, code, text = "unavailable", 421, cfg.MsgTempUnavail
			m.count.rejectOther++
			if m.full() {
				m.warnFull()
			}
		}
	}
	if w != nil {
		total++
		host++
		s := &session{src: src, local: local, start: time.Now(), done: make(chan struct{}), conn: c,
			ns: &ipc.NewSession{ID: id, Client: src, Local: local, Accepted: time.Now().UnixNano(),
				Count: total, HostCount: host}}
		s.slot = m.takeSlot()
		m.sessions[id] = s
		m.count.peak = max(m.count.peak, len(m.sessions))
		m.perHost[src.Addr()]++
		// Logged before the sender can hand the session over, so that
		// NEW comes before the worker's lines.
		m.logNew(cfg, total, host, local, src, id)
		// pickWorker found room in the queue, under this lock.
		m.enqueue(w, id, s)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()

	m.logNew(cfg, total, host, local, src, id)
	// 1.4's line of a connection refused by a limit.
	switch by {
	case "maxconn":
		m.log.Eventf(logx.Info, "Rejecting (%d) connection from %v, id=%d", total, src, id)
	case "maxhost":
		m.log.Eventf(logx.Info, "Rejecting (host %d) connection from %v, id=%d", host, src, id)
	case "load":
		m.log.Eventf(logx.Info, "Rejecting connection from %v, load=%f, id=%d", src, m.load(), id)
	}
	m.mu.Lock()
	m.countClose(by)
	m.mu.Unlock()
	m.logClose(by, src, 0, id)
	go m.rejectEvent(c, code, text, by, src, local, id)
}

// logNew writes the NEW line of a connection, in 1.4's layout: the
// connections open and those from its source, the local and client
// addresses, the ident (not known yet), the MTA's address when master
// knows it (fixed modes; getsockname and tproxy, where it is the local
// address; empty otherwise), and the session's id.
func (m *master) logNew(cfg *config.Config, total, host int, local, src netip.AddrPort, id uint64) {
	dst := ""
	switch {
	case cfg.Mode.Fixed():
		dst = netip.AddrPortFrom(cfg.FixedServer, cfg.FixedServerPort).String()
	case cfg.Mode == config.ModeGetsockname || cfg.Mode == config.ModeTproxy:
		dst = local.String()
	}
	m.log.Alwaysf("NEW (%d/%d) on=%v, src=%v, ident=, dst=%s, id=%d", total, host, local, src, dst, id)
}

// logClose writes the CLOSE line of a session master ended itself (see
// logNew): 1.4's fields, then the client's port and the session's id.
func (m *master) logClose(by string, src netip.AddrPort, secs int64, id uint64) {
	cl := logx.Close{By: by, Secs: secs, Src: src, ID: id}
	m.log.Alwaysf("%s", cl.Line())
}

// reject answers a connection that is not admitted and closes it.
func (m *master) reject(c *net.TCPConn, code int, text string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(smtp.FormatReply(code, "", m.cfg.Load().ProxyHostName(), text))
	smtp.HangUp(c)
	c.Close()
}

// forget removes session id from the books. Called with m.mu held.
func (m *master) forget(id uint64) *session {
	s, ok := m.sessions[id]
	if !ok {
		return nil
	}
	delete(m.sessions, id)
	m.freeSlots = append(m.freeSlots, s.slot)
	m.tellLockd(ipc.MsgSessionClosed, &ipc.SessionClosed{ID: id})
	m.forgetIdent(id)
	close(s.done)
	if s.conn != nil {
		s.conn.Close()
		s.conn, s.ns = nil, nil
		s.worker.untaken--
	}
	if m.perHost[s.src.Addr()]--; m.perHost[s.src.Addr()] <= 0 {
		delete(m.perHost, s.src.Addr())
	}
	s.worker.sessions--
	if m.draining && len(m.sessions) == 0 {
		close(m.drained)
	}
	return s
}

// endSession books the end of a session a worker reports. It returns false
// when the session is not that worker's: a protocol violation.
func (m *master) endSession(p *proc, e *ipc.SessionEnd) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.sessions[e.ID]
	if !ok || s.worker != p || s.conn != nil {
		return false
	}
	m.forget(e.ID)
	m.countEnd(e)
	if e.Direct {
		m.count.direct++
	}
	if e.Empty {
		m.count.empty++
	}
	return true
}

// dropSessionsOf forgets the sessions of a worker that died, logging the
// CLOSE line the worker could not write. Called with m.mu held.
func (m *master) dropSessionsOf(p *proc) int {
	n := 0
	for id, s := range m.sessions {
		if s.worker != p {
			continue
		}
		m.forget(id)
		n++
		m.count.lostSessions++
		m.countClose("crash")
		m.logClose("crash", s.src, int64(time.Since(s.start)/time.Second), id)
	}
	return n
}

func contextTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
