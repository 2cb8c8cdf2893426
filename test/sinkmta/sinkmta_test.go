package sinkmta_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/test/harness"
	"smtp-gated/test/sinkmta"
)

func start(t testing.TB) *sinkmta.Sink {
	t.Helper()
	s, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestDialogue(t *testing.T) {
	s := start(t)
	s.KeepBodies(5)
	c := harness.Dial(t, s.Addr())
	c.Expect(220)
	c.Cmd("NOOP", 250)
	c.Cmd("MAIL FROM:<a@example.com>", 503) // no HELO yet
	c.Cmd("EHLO", 501)
	exts := c.Ehlo("client.test")
	for _, want := range []string{"PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES"} {
		if !harness.HasExt(exts, want) {
			t.Errorf("EHLO lacks %s: %q", want, exts)
		}
	}
	c.Cmd("RCPT TO:<b@example.org>", 503)
	c.Cmd("DATA", 503)
	c.Cmd("MAIL FROM:<a@example.com> SIZE=999999999999", 552)
	c.Cmd("MAIL FROM:<a@example.com> SIZE=x", 501)
	c.Cmd("MAIL FROM:a@example.com", 501)
	c.Cmd("mail from:<a@example.com> BODY=8BITMIME SIZE=100", 250)
	c.Cmd("MAIL FROM:<a@example.com>", 503) // nested
	c.Cmd("DATA", 503)                      // no recipient
	c.Cmd("RCPT TO:<reject@example.org>", 550)
	c.Cmd("RCPT TO:<tempfail@example.org>", 450)
	c.Cmd("RCPT TO:<>", 501)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	body := "Subject: hi\r\n\r\n.dot\r\n..two\r\nend\r\n"
	c.Send("Subject: hi\r\n\r\n..dot\r\n...two\r\nend\r\n.\r\n")
	c.Expect(250)
	c.Cmd("RSET", 250)
	c.Cmd("VRFY x", 252)
	c.Cmd("HELP", 214)
	c.Cmd("XYZZY", 502)
	c.Cmd("STARTTLS", 502)
	c.Cmd("HELO client.test", 250)
	c.Quit()
	c.ExpectClosed()

	st := s.Stats()
	if want := (sinkmta.Stats{Connections: 1, Messages: 1, Recipients: 1, Bytes: int64(len(body))}); st != want {
		t.Errorf("stats %v, want %v", st, want)
	}
	kept := s.Kept()
	if len(kept) != 1 || kept[0].From != "a@example.com" || len(kept[0].To) != 1 || kept[0].To[0] != "b@example.org" || string(kept[0].Body) != body {
		t.Errorf("kept %+v, want one message a@example.com -> b@example.org with body %q", kept, body)
	}
}

// readCodes reads n replies from r and returns their codes (multi-line
// replies count once).
func readCodes(t *testing.T, r *bufio.Reader, n int) []string {
	t.Helper()
	var codes []string
	for len(codes) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after replies %v: %v", codes, err)
		}
		if len(line) >= 4 && line[3] == ' ' {
			codes = append(codes, line[:3])
		}
	}
	return codes
}

func TestPipelining(t *testing.T) {
	s := start(t)
	s.KeepBodies(2)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	// Everything in one write, bodies included (a client would wait for 354;
	// the sink must not lose bytes that arrive early either).
	io.WriteString(conn, "EHLO c.test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<reject@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n"+
		"first\r\n.\r\n"+
		"RSET\r\nMAIL FROM:<d@x>\r\nRCPT TO:<e@x>\r\nDATA\r\n"+
		"second\r\n..\r\n.\r\nNOOP\r\nQUIT\r\n")
	got := strings.Join(readCodes(t, r, 14), " ")
	if want := "220 250 250 250 550 250 354 250 250 250 250 354 250 250"; got != want {
		t.Errorf("reply codes\n got %s\nwant %s", got, want)
	}
	if codes := readCodes(t, r, 1); codes[0] != "221" {
		t.Errorf("QUIT: %v", codes)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Errorf("want EOF after QUIT, got %v", err)
	}
	bodies := s.Bodies()
	if len(bodies) != 2 || string(bodies[0]) != "first\r\n" || string(bodies[1]) != "second\r\n.\r\n" {
		t.Errorf("bodies %q", bodies)
	}
	if st := s.Stats(); st.Messages != 2 || st.Recipients != 3 {
		t.Errorf("stats %v, want 2 messages, 3 recipients", st)
	}
}

func TestPipelinedRepliesComeInOneWrite(t *testing.T) {
	s := start(t)
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	readCodes(t, r, 1)
	io.WriteString(conn, "EHLO c.test\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
	// Wait until the sink has answered everything, then read once: the
	// replies were flushed together, so one read returns all of them.
	time.Sleep(100 * time.Millisecond)
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(buf[:n]), "\r\n"); got != 9 { // EHLO: 5 lines; MAIL, RCPT, RCPT, DATA
		t.Errorf("one read returned %d reply lines, want 9 (one flush for the batch): %q", got, buf[:n])
	}
}

func TestLargeBody(t *testing.T) {
	s := start(t)
	s.KeepBodies(1)
	rng := rand.New(rand.NewPCG(1, 2))
	var body bytes.Buffer
	body.WriteString("Subject: big\r\n\r\n")
	for body.Len() < 10<<20 {
		n := rng.IntN(200)
		switch rng.IntN(20) {
		case 0:
			n = 40<<10 + rng.IntN(40<<10) // longer than the sink's read buffer
		case 1:
			body.WriteByte('.') // needs dot-stuffing
		}
		for range n {
			body.WriteByte(byte('a' + rng.IntN(26)))
		}
		body.WriteString("\r\n")
	}
	body.WriteString(".\r\n..\r\n")
	c := harness.Dial(t, s.Addr())
	c.SetTimeout(60 * time.Second)
	c.Expect(220)
	c.Ehlo("client.test")
	c.SendMail("a@example.com", []string{"b@example.org", "c@example.org"}, body.Bytes())
	c.Quit()
	if got, want := s.Bytes(), int64(body.Len()); got != want {
		t.Errorf("Bytes() = %d, want %d", got, want)
	}
	if s.Recipients() != 2 || s.Messages() != 1 {
		t.Errorf("stats %v", s.Stats())
	}
	if b := s.Bodies(); len(b) != 1 || !bytes.Equal(b[0], body.Bytes()) {
		t.Errorf("kept body differs from the one sent (%d bytes)", body.Len())
	}
}

func TestSizeLimitInData(t *testing.T) {
	s := start(t)
	s.SetMaxSize(1000)
	c := harness.Dial(t, s.Addr())
	c.Expect(220)
	exts := c.Ehlo("c.test")
	if !strings.Contains(strings.Join(exts, ","), "SIZE 1000") {
		t.Errorf("EHLO %q lacks SIZE 1000", exts)
	}
	c.Cmd("MAIL FROM:<a@x>", 250)
	c.Cmd("RCPT TO:<b@x>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(bytes.Repeat([]byte("x"), 2000))))
	c.Expect(552)
	c.Cmd("MAIL FROM:<a@x>", 250) // the session goes on
	c.Quit()
	if s.Messages() != 0 {
		t.Errorf("an oversized message was counted: %v", s.Stats())
	}
}

func TestLongCommandLine(t *testing.T) {
	s := start(t)
	c := harness.Dial(t, s.Addr())
	c.Expect(220)
	c.Send("NOOP " + strings.Repeat("x", 100<<10) + "\r\n")
	c.Expect(500)
	c.Cmd("NOOP", 250)
	c.Quit()
}

func TestKeepRing(t *testing.T) {
	s := start(t)
	s.KeepBodies(2)
	c := harness.Dial(t, s.Addr())
	c.Expect(220)
	c.Ehlo("c.test")
	for i := range 3 {
		c.SendMail(fmt.Sprintf("f%d@x", i), []string{"t@x"}, fmt.Appendf(nil, "body %d\r\n", i))
	}
	c.Quit()
	k := s.Kept()
	if len(k) != 2 || k[0].From != "f1@x" || k[1].From != "f2@x" || string(k[1].Body) != "body 2\r\n" {
		t.Errorf("kept %+v, want the last two (f1, f2)", k)
	}
	s.Reset()
	if st := s.Stats(); st != (sinkmta.Stats{}) || len(s.Kept()) != 0 {
		t.Errorf("after Reset: %v, %d kept", st, len(s.Kept()))
	}
}

// send runs one transaction on a fresh connection without the testing
// package (it runs in goroutines).
func send(addr string, rcpts int, body string) error {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	expect := func(code string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if !strings.HasPrefix(line, code) {
				return fmt.Errorf("got %q, want %s", line, code)
			}
			if line[3] == ' ' {
				return nil
			}
		}
	}
	if err := expect("220"); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("EHLO c.test\r\nMAIL FROM:<a@x>\r\n")
	for i := range rcpts {
		fmt.Fprintf(&b, "RCPT TO:<r%d@x>\r\n", i)
	}
	b.WriteString("DATA\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return err
	}
	for range 2 + rcpts {
		if err := expect("250"); err != nil {
			return err
		}
	}
	if err := expect("354"); err != nil {
		return err
	}
	if _, err := io.WriteString(conn, body+".\r\nQUIT\r\n"); err != nil {
		return err
	}
	if err := expect("250"); err != nil {
		return err
	}
	return expect("221")
}

func TestManyConcurrentConnections(t *testing.T) {
	s := start(t)
	const n = 2000
	// All connections open at once: hold them until every one is greeted.
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatalf("after %d connections: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, c := range conns {
		wg.Go(func() {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(c)
			if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
				errs <- fmt.Errorf("greeting %q: %v", line, err)
				return
			}
			if _, err := io.WriteString(c, "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"); err != nil {
				errs <- err
				return
			}
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					errs <- err
					return
				}
				if strings.HasPrefix(line, "354") {
					break
				}
			}
			if _, err := io.WriteString(c, "hello\r\n.\r\nQUIT\r\n"); err != nil {
				errs <- err
				return
			}
			rest, _ := io.ReadAll(r)
			if !strings.Contains(string(rest), "250 2.0.0 Ok: queued") {
				errs <- fmt.Errorf("after the body: %q", rest)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !s.WaitMessages(n, 5*time.Second) {
		t.Fatalf("stats %v, want %d messages", s.Stats(), n)
	}
	if st := s.Stats(); st.Connections != n || st.Recipients != n || st.Bytes != 7*n {
		t.Errorf("stats %v", st)
	}
}

func TestCloseEndsOpenSessions(t *testing.T) {
	s, err := sinkmta.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	r.ReadString('\n')
	io.WriteString(conn, "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\npartial body")
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a session in DATA")
	}
	if _, err := io.ReadAll(r); err != nil {
		t.Errorf("connection not closed cleanly: %v", err)
	}
	if _, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		t.Errorf("still accepting after Close")
	}
}

func TestWaitMessages(t *testing.T) {
	s := start(t)
	if s.WaitMessages(1, 20*time.Millisecond) {
		t.Fatal("WaitMessages(1) true before any message")
	}
	go send(s.Addr(), 1, "x\r\n")
	if !s.WaitMessages(1, 10*time.Second) {
		t.Fatal("WaitMessages(1) false after a message")
	}
}

// BenchmarkSink measures messages per second through the sink: 8 clients,
// each a session of pipelined transactions with a 4 kB body.
func BenchmarkSink(b *testing.B) {
	s := start(b)
	body := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 50)
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("tcp", s.Addr())
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		w := bufio.NewWriter(conn)
		readReply := func() {
			for {
				line, err := r.ReadSlice('\n')
				if err != nil {
					b.Error(err)
					return
				}
				if len(line) > 3 && line[3] == ' ' {
					return
				}
			}
		}
		readReply()
		w.WriteString("EHLO bench\r\n")
		w.Flush()
		readReply()
		for pb.Next() {
			w.WriteString("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n")
			w.Flush()
			readReply()
			readReply()
			readReply()
			w.WriteString(body)
			w.WriteString(".\r\n")
			w.Flush()
			readReply()
		}
		w.WriteString("QUIT\r\n")
		w.Flush()
		readReply()
	})
	b.StopTimer()
	b.ReportMetric(float64(s.Messages())/b.Elapsed().Seconds(), "msgs/s")
}
