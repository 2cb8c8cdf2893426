package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// timeout_idle measures silence, through the real Postfix: a body
// trickled for more than twice timeout_idle (a line every 250 ms for
// 8 s, timeout_idle 3) is delivered; a client that stops in the middle
// of its body is cut off after timeout_idle, and nothing is delivered.
func TestIdleTrickle(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "timeout_idle 3")

	slow := harness.Token(t)
	c := greeted(t, s.addr())
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	start := time.Now()
	c.Send(fmt.Sprintf("Subject: %s\r\n\r\n", slow))
	for i := 0; time.Since(start) < 8*time.Second; i++ {
		c.Send(fmt.Sprintf("line %d of a slow upload\r\n", i))
		time.Sleep(250 * time.Millisecond) // the slow client
	}
	c.Send(".\r\n")
	if r := c.Expect(250); !strings.Contains(r, "queued") {
		t.Errorf("reply to the final dot: %q", r)
	}
	c.Quit()
	s.pf.WaitDelivered(t, slow, 30*time.Second)
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, .*trns=1`), 10*time.Second)

	silent := harness.Token(t)
	c = greeted(t, s.addr())
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(fmt.Sprintf("Subject: %s\r\n\r\nhalf a message\r\n", silent))
	start = time.Now()
	c.SetTimeout(10 * time.Second)
	c.ExpectClosed()
	if took := time.Since(start); took < 2500*time.Millisecond || took > 6*time.Second {
		t.Errorf("a silent client was cut off after %v, want about timeout_idle (3s)", took)
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=(idle|timeout), `), 10*time.Second)
	s.pf.NotDelivered(t, silent, 2*time.Second)
}
