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

// admit applies the global limits to a new connection and hands it to a
// session worker (admission.admit), or answers it with a refusal.
func (m *master) admit(c *net.TCPConn) {
	cfg := m.cfg.Load()
	src, local := addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
	v := m.adm.admit(cfg, c, src, local)
	if v.by == "" {
		return
	}
	m.adm.logNew(cfg, v.total, v.host, local, src, v.id)
	// 1.4's line of a connection refused by a limit.
	switch v.by {
	case "maxconn":
		m.log.Eventf(logx.Info, "Rejecting (%d) connection from %v, id=%d", v.total, src, v.id)
	case "maxhost":
		m.log.Eventf(logx.Info, "Rejecting (host %d) connection from %v, id=%d", v.host, src, v.id)
	case "load":
		m.log.Eventf(logx.Info, "Rejecting connection from %v, load=%f, id=%d", src, m.adm.load(), v.id)
	}
	m.adm.logClose(v.by, src, 0, v.id)
	go m.rejectEvent(c, v.code, v.text, v.by, src, local, v.id)
}

// reject answers a connection that is not admitted and closes it.
func reject(c *net.TCPConn, cfg *config.Config, code int, text string) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(smtp.FormatReply(code, "", cfg.ProxyHostName(), text))
	smtp.HangUp(c)
	c.Close()
}

func contextTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
