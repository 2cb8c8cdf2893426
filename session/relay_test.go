package session

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type relayed struct {
	by           string
	cliRx, srvRx uint64
}

// startRelay relays between a "client" and a "server" connection and
// returns the far ends the test drives.
func startRelay(t *testing.T, idle time.Duration) (client, server *net.TCPConn, done chan relayed) {
	client, proxyC := tcpPair(t)
	proxyS, server := tcpPair(t)
	done = make(chan relayed, 1)
	go func() {
		by, c, s := relay(proxyC, proxyS, idle)
		done <- relayed{string(by), c, s}
	}()
	return client, server, done
}

func TestRelayCopiesBothWaysAndCounts(t *testing.T) {
	client, server, done := startRelay(t, 5*time.Second)
	big := bytes.Repeat([]byte("0123456789abcdef"), 64*1024) // 1 MiB, several buffers
	go client.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("server got other bytes than the client sent")
	}
	server.Write([]byte("221 bye\r\n"))
	line := make([]byte, 9)
	if _, err := io.ReadFull(client, line); err != nil || string(line) != "221 bye\r\n" {
		t.Fatalf("client got %q, %v; want the server's reply", line, err)
	}
	server.Close()
	r := <-done
	if r.by != "server" || r.cliRx != uint64(len(big)) || r.srvRx != 9 {
		t.Fatalf("got by=%s rcv=%d/%d, want by=server rcv=%d/9", r.by, r.cliRx, r.srvRx, len(big))
	}
	// The client sees the end too.
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(line); err == nil {
		t.Fatalf("client read %d bytes after the server closed, want end of file", n)
	}
}

func TestRelayClientClose(t *testing.T) {
	client, _, done := startRelay(t, 5*time.Second)
	client.Write([]byte("QUIT\r\n"))
	client.Close()
	if r := <-done; r.by != "client" || r.cliRx != 6 {
		t.Fatalf("got by=%s rcv=%d/%d, want by=client rcv=6/0", r.by, r.cliRx, r.srvRx)
	}
}

func TestRelayIdle(t *testing.T) {
	_, _, done := startRelay(t, 200*time.Millisecond)
	select {
	case r := <-done:
		if r.by != "idle" {
			t.Fatalf("got by=%s, want idle", r.by)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an idle relay did not end")
	}
}

// One busy direction keeps the session alive even though the other side
// sends nothing for longer than the idle timeout.
func TestRelayBusyOneWayIsNotIdle(t *testing.T) {
	client, server, done := startRelay(t, 300*time.Millisecond)
	go io.Copy(io.Discard, server)
	for range 10 {
		if _, err := client.Write([]byte("data\r\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case r := <-done:
		t.Fatalf("relay ended (by=%s) while the client was sending", r.by)
	default:
	}
	client.Close()
	<-done
}
