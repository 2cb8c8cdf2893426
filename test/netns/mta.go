//go:build linux

package netns

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"smtp-gated/test/sinkmta"
)

// MTA is a sink MTA that records where each connection came from.
type MTA struct {
	*sinkmta.Sink
	conns chan Conn
}

// Conn is what the MTA saw of one accepted connection.
type Conn struct {
	Remote, Local netip.AddrPort
}

type recorder struct {
	net.Listener
	conns chan Conn
}

func (r recorder) Accept() (net.Conn, error) {
	c, err := r.Listener.Accept()
	if err == nil {
		select {
		case r.conns <- Conn{unmapped(c.RemoteAddr()), unmapped(c.LocalAddr())}:
		default:
		}
	}
	return c, err
}

func unmapped(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// StartMTA serves SMTP on each of addrs (port 25) in namespace ns,
// keeping the last 16 messages; t.Cleanup stops it.
func StartMTA(t testing.TB, ns string, addrs ...netip.Addr) *MTA {
	t.Helper()
	m := &MTA{conns: make(chan Conn, 64)}
	for i, a := range addrs {
		ln := recorder{Listen(t, ns, "tcp", netip.AddrPortFrom(a, 25).String()), m.conns}
		s := sinkmta.Serve(ln)
		t.Cleanup(func() { s.Close() })
		s.KeepBodies(16)
		if i == 0 {
			m.Sink = s // the IPv4 one, in the tests
		}
	}
	return m
}

// Next returns the next connection the MTA accepted.
func (m *MTA) Next(t testing.TB) Conn {
	t.Helper()
	select {
	case c := <-m.conns:
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("the MTA accepted no connection within 15 s")
		return Conn{}
	}
}

// None checks that the MTA accepted no connection (so far).
func (m *MTA) None(t testing.TB) {
	t.Helper()
	select {
	case c := <-m.conns:
		t.Errorf("the MTA accepted a connection from %v, want none", c.Remote)
	default:
	}
}
