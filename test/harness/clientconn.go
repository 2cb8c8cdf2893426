package harness

import (
	"bufio"
	"net"
	"testing"
)

// NewClient is a Client on a connection the test opened itself (from a
// network namespace, from a chosen source address). Like Dial, it does not
// read the greeting; t.Cleanup closes the connection.
func NewClient(t testing.TB, conn net.Conn) *Client {
	t.Cleanup(func() { conn.Close() })
	return &Client{t: t, conn: conn, r: bufio.NewReaderSize(conn, 64<<10), timeout: DefaultTimeout}
}
