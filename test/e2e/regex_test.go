package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// A command refused by a regex_* option ends the relayed session, as in
// 1.4: Postfix gets QUIT, the proxy takes the session over, and what the
// client sends afterwards (a whole message here) never reaches Postfix.
func TestRegexRefusalEndsRelay(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "regex_reject_helo ^bad\\.", "regex_reject_rcpt_to ^refuse@", "lock_on never")
	for _, tc := range []struct {
		name    string
		refused func(c *harness.Client) string
		reason  string
	}{
		{"helo", func(c *harness.Client) string {
			return c.Cmd("EHLO bad.example", 550)
		}, "Forbidden HELO/EHLO"},
		{"rcpt", func(c *harness.Client) string {
			c.Ehlo("client.test")
			c.Cmd("MAIL FROM:<a@example.com>", 250)
			return c.Cmd("RCPT TO:<refuse@example.org>", 550)
		}, "Forbidden RCPT TO"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := d.Mark()
			c := harness.Dial(t, s.addr())
			c.Expect(220)
			if r := tc.refused(c); !strings.HasSuffix(r, " test-proxy "+tc.reason) {
				t.Errorf("refusal %q, want the default text %q", r, tc.reason)
			}
			token := harness.Token(t)
			if r := c.Cmd("MAIL FROM:<a@example.com>", 451); !strings.HasSuffix(r, " test-proxy "+tc.reason) {
				t.Errorf("MAIL after the refusal got %q, want 451 and the reason", r)
			}
			c.Cmd("RCPT TO:<b@example.org>", 503)
			c.Cmd("DATA", 503)
			c.Cmd("RSET", 250)
			// A client that does not listen: the message anyway.
			c.Send(string(harness.DotStuff(harness.Message("a@example.com", "b@example.org", token))))
			c.SetTimeout(10 * time.Second)
			for {
				if code, _, err := c.Reply(); err != nil || code == 554 {
					break // on_takeover_cmds reached: closed
				}
			}
			d.WaitLogAfter(t, mark, regexp.MustCompile(`CLOSE by=regex, `), 10*time.Second)
			d.WaitLogAfter(t, mark, regexp.MustCompile(`SESSION TAKEOVER: .*reason=`+tc.reason), 10*time.Second)
			s.pf.NotDelivered(t, token, 2*time.Second)
		})
	}
	// The same Postfix takes a clean message through the proxy.
	token := harness.Token(t)
	c := greeted(t, s.addr())
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
}
