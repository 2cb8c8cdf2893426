package harness_test

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// ask sends req to addr ("/path" or host:port), ends the sending side and
// returns the whole answer without NULs.
func ask(t *testing.T, addr string, req []byte) string {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\x00", "")
}

func instreamReq(data []byte) []byte {
	req := []byte("zINSTREAM\x00")
	req = binary.BigEndian.AppendUint32(req, uint32(len(data)))
	req = append(req, data...)
	return binary.BigEndian.AppendUint32(req, 0)
}

func TestEICAR(t *testing.T) {
	sum := md5.Sum(harness.EICAR())
	if got := hex.EncodeToString(sum[:]); len(harness.EICAR()) != 68 || got != "44d88612fea8a8f36de82e1278abb02f" {
		t.Errorf("EICAR(): %d bytes, md5 %s; want the 68-byte test file", len(harness.EICAR()), got)
	}
}

// The shared clamd answers on both addresses, finds EICAR and the marker
// (under two different names), and is the same instance on every call.
func TestClamdPeer(t *testing.T) {
	c := harness.Clamd(t)
	if again := harness.Clamd(t); again != c {
		t.Error("Clamd returned another instance on the second call")
	}
	if c.Pid() == 0 {
		t.Error("Pid() = 0 for a running clamd")
	}
	names := map[string]bool{}
	for _, addr := range []string{c.Socket, c.Addr} {
		if got := ask(t, addr, []byte("zPING\x00")); got != "PONG" {
			t.Errorf("%s: PING answered %q", addr, got)
		}
		for _, data := range [][]byte{
			harness.VirusMessage("a@example.com", "b@example.org", "x"),
			[]byte("text " + harness.ClamdMarker + " text\r\n"),
		} {
			got := ask(t, addr, instreamReq(data))
			name, ok := strings.CutSuffix(strings.TrimPrefix(got, "stream: "), " FOUND")
			if !ok {
				t.Errorf("%s: %q, want a virus", addr, got)
			}
			names[name] = true
		}
		if got := ask(t, addr, instreamReq(harness.Message("a@example.com", "b@example.org", "x"))); got != "stream: OK" {
			t.Errorf("%s: clean message: %q", addr, got)
		}
	}
	if len(names) != 2 {
		t.Errorf("virus names %v, want two distinct ones", names)
	}
}

// A private clamd stops and starts again on the same socket and port.
func TestNewClamdStopStart(t *testing.T) {
	c := harness.NewClamd(t)
	pid := c.Pid()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if c.Pid() != 0 {
		t.Error("Pid() of a stopped clamd is not 0")
	}
	if _, err := net.Dial("unix", c.Socket); err == nil {
		t.Error("the socket still answers after Stop")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if c.Pid() == 0 || c.Pid() == pid {
		t.Errorf("pid after the restart %d (before %d)", c.Pid(), pid)
	}
	if got := ask(t, c.Socket, []byte("zPING\x00")); got != "PONG" {
		t.Errorf("PING after the restart: %q", got)
	}
	if !strings.Contains(c.Log(), "Started at") {
		t.Errorf("clamd log:\n%s", c.Log())
	}
}

// The shared spamd scores GTUBE 1000 and more, an ordinary message less
// than 5, on both addresses.
func TestSpamdPeer(t *testing.T) {
	s := harness.Spamd(t)
	check := func(msg []byte) []byte {
		return append([]byte("CHECK SPAMC/1.2\r\nContent-length: "+strconv.Itoa(len(msg))+"\r\n\r\n"), msg...)
	}
	for _, addr := range []string{s.Socket, s.Addr} {
		if got := ask(t, addr, check(harness.SpamMessage("a@example.com", "b@example.org", "x"))); !strings.Contains(got, "Spam: True ; 10") {
			t.Errorf("%s: GTUBE: %q", addr, got)
		}
		if got := ask(t, addr, check(harness.Message("a@example.com", "b@example.org", "x"))); !strings.Contains(got, "Spam: False ; ") {
			t.Errorf("%s: ordinary message: %q", addr, got)
		}
	}
}
