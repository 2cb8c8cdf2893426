package e2e

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// streamMessage is a message of about size bytes carrying token, with
// EICAR at where: "start" (the first line of the body), "middle", "end"
// (its last line), or "" for none.
func streamMessage(token string, size int, where string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <a@example.com>\r\nTo: <b@example.org>\r\nSubject: %s\r\n", token)
	fmt.Fprintf(&b, "Message-ID: <%s@test.invalid>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n", token)
	if where == "start" {
		b.Write(harness.EICAR())
		b.WriteString("\r\n")
	}
	line := "streamed to clamd while it arrives, " + token + "\r\n"
	for b.Len() < size {
		if where == "middle" && b.Len() >= size/2 {
			b.Write(harness.EICAR())
			b.WriteString("\r\n")
			where = ""
		}
		b.WriteString(line)
	}
	if where == "end" {
		b.Write(harness.EICAR())
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// sendSlowly sends DATA's payload in pieces with a pause after each, as a
// client on a slower link does, so that the stream runs while it arrives.
func sendSlowly(c *harness.Client, data []byte, piece int, pause time.Duration) {
	for len(data) > 0 {
		n := min(piece, len(data))
		c.Send(string(data[:n]))
		data = data[n:]
		time.Sleep(pause)
	}
}

var streamedLine = regexp.MustCompile(`stream session=\d+ trns=\d+: (\d+) bytes streamed before the dot, (\d+) after`)

// The final dot is held for a streamed scan: with scan_stream yes over
// clamd's unix socket, and with the default (auto) over TCP, EICAR at the
// start, in the middle and at the very end of a 3 MiB message gets 550 and
// nothing reaches Postfix; the clean message is delivered; and the message
// went to clamd while it arrived.
func TestVirusHeldBackStreaming(t *testing.T) {
	clamd := harness.Clamd(t)
	for _, tc := range []struct{ name, path, opt string }{
		{"unix", clamd.Socket, "scan_stream yes"},
		{"tcp", clamd.Addr, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t)
			d := s.start(t, "antivirus_type clamd", "antivirus_path "+tc.path, tc.opt,
				"msg_virus_found virus found", "scan_max_size 100000000")
			var viruses []string
			for _, where := range []string{"start", "middle", "end", ""} {
				m := d.Mark()
				token := harness.Token(t)
				msg := streamMessage(token, 3<<20, where)
				c := greeted(t, s.addr())
				c.Cmd("MAIL FROM:<a@example.com>", 250)
				c.Cmd("RCPT TO:<b@example.org>", 250)
				c.Cmd("DATA", 354)
				sendSlowly(c, harness.DotStuff(msg), 256<<10, 20*time.Millisecond)
				if where == "" {
					c.Expect(250)
					c.Quit()
					delivered(t, s.pf, token, msg)
				} else {
					if r := c.Expect(550); !strings.Contains(r, "virus found (") {
						t.Fatalf("EICAR at the %s: reply %q", where, r)
					}
					c.Quit()
					d.WaitLogAfter(t, m, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)
					viruses = append(viruses, token)
				}
				line := d.WaitLogAfter(t, m, streamedLine, 10*time.Second)
				before, _ := strconv.Atoi(streamedLine.FindStringSubmatch(line)[1])
				if before < len(msg)/2 {
					t.Errorf("EICAR at %q: %d bytes of %d went to clamd before the dot: %s", where, before, len(msg), line)
				}
			}
			// The clean message, sent last, was delivered: the viruses had
			// their chance to arrive before it.
			for _, token := range viruses {
				s.pf.NotDelivered(t, token, 100*time.Millisecond)
			}
		})
	}
}

// clamd killed in the middle of a stream: 451 at the dot (the scan of the
// whole file, the fallback, finds no clamd either) and nothing delivered.
func TestStreamClamdKilled(t *testing.T) {
	clamd := harness.NewClamd(t)
	s := newSetup(t)
	d := s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket, "scan_stream yes",
		"msg_scanner_failed scanner unavailable", "timeout_scanner 5")
	token := harness.Token(t)
	data := harness.DotStuff(streamMessage(token, 3<<20, ""))
	c := greeted(t, s.addr())
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	sendSlowly(c, data[:1<<20], 256<<10, 20*time.Millisecond)
	time.Sleep(300 * time.Millisecond) // the stream is connected and fed
	pid := clamd.Pid()
	if pid == 0 {
		t.Fatal("clamd is not running")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for alive(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	sendSlowly(c, data[1<<20:], 256<<10, 5*time.Millisecond)
	t0 := time.Now()
	if r := c.Expect(451); !strings.Contains(r, "scanner unavailable") {
		t.Fatalf("reply with clamd killed mid-stream: %q", r)
	}
	if dt := time.Since(t0); dt > 5*time.Second {
		t.Errorf("the 451 took %v", dt)
	}
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=scanner, `), 10*time.Second)
	d.WaitLog(t, regexp.MustCompile(`scanner: scan session=1 trns=1 .*verdict=error scanners=clamd .*err="clamd: `), time.Second)
	s.pf.NotDelivered(t, token, 2*time.Second)
}

// A client that goes away in the middle of DATA leaves nothing behind in
// the scanner process: its descriptors come back to what they were
// (the spool file and the connection to clamd are closed).
func TestStreamClientGone(t *testing.T) {
	clamd := harness.Clamd(t)
	s := newSetup(t)
	d := s.start(t, "antivirus_type clamd", "antivirus_path "+clamd.Socket, "scan_stream yes")
	roles := children(t, d)
	if len(roles["scanner"]) != 1 {
		t.Fatalf("scanner processes: %v", roles)
	}
	pid := roles["scanner"][0]
	d.WaitLog(t, regexp.MustCompile(`clamd at .* answers PING`), 10*time.Second)
	// One message through first: whatever the process opens once is open.
	c := greeted(t, s.addr())
	c.SendMail("a@example.com", []string{"b@example.org"}, streamMessage(harness.Token(t), 1<<20, ""))
	c.Quit()
	count := func() int { s, o := fdCount(t, pid); return s + o }
	base := count()

	for i := range 3 {
		c = greeted(t, s.addr())
		c.Cmd("MAIL FROM:<a@example.com>", 250)
		c.Cmd("RCPT TO:<b@example.org>", 250)
		c.Cmd("DATA", 354)
		data := harness.DotStuff(streamMessage(harness.Token(t), 3<<20, ""))
		sendSlowly(c, data[:1<<20], 256<<10, 10*time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		for count() < base+2 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := count(); n != base+2 {
			t.Fatalf("round %d: scanner has %d descriptors while streaming, want %d (the spool file and clamd)", i, n, base+2)
		}
		c.Close()
		deadline = time.Now().Add(5 * time.Second)
		for count() != base && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := count(); n != base {
			t.Fatalf("round %d: scanner has %d descriptors after the client left, want %d", i, n, base)
		}
	}
	d.WaitLog(t, regexp.MustCompile(`stream session=\d+ trns=1: abandoned by the session`), 10*time.Second)
}
