package harness

import (
	"bufio"
	"net"
	"testing"
)

// DialFrom is Dial from the local address localIP: a test that needs
// clients with different addresses uses loopback, which answers to the
// whole of 127.0.0.0/8 ("127.0.0.2", "127.0.0.3", ...).
func DialFrom(t testing.TB, localIP, addr string) *Client {
	t.Helper()
	d := net.Dialer{Timeout: DefaultTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, localIP, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10), timeout: DefaultTimeout}
}

// FromConn makes a Client of a connection the test made itself (closed
// by t.Cleanup if the test does not close it). From a goroutine other
// than the test's, use only the methods that do not fail the test:
// Reply and Conn.
func FromConn(t testing.TB, conn net.Conn) *Client {
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10), timeout: DefaultTimeout}
}
