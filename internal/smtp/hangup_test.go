package smtp

import (
	"io"
	"net"
	"testing"
)

// A client that sent more than the proxy read still gets the last reply
// whole, then EOF: closing with unread data would have reset the
// connection.
func TestHangUp(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		buf := make([]byte, 6)
		io.ReadFull(c, buf) // one command read, the rest left unread
		c.Write(FormatReply(554, "5.7.1", "proxy.test", "go away"))
		HangUp(c)
		c.Close()
	}()
	c, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("NOOP\r\nNOOP\r\nNOOP\r\n"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "554 5.7.1 proxy.test go away\r\n" {
		t.Errorf("got %q, %v", got, err)
	}
	<-done
}
