package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// The final dot is held until the scanner's verdict: a message with
// EICAR gets 550 and Postfix keeps nothing of it, over FILDES (clamd's
// unix socket; clamd cannot read the spool directory) and over INSTREAM
// (TCP). A clean message in the same run is delivered.
func TestVirusHeldBack(t *testing.T) {
	clamd := harness.Clamd(t)
	for _, tc := range []struct{ name, path string }{
		{"fildes", clamd.Socket},
		{"instream", clamd.Addr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSetup(t)
			d := s.start(t, "antivirus_type clamd", "antivirus_path "+tc.path,
				"msg_virus_found virus found", "spool_leave_on virus")
			c := greeted(t, s.addr())
			token := harness.Token(t)
			c.Cmd("MAIL FROM:<a@example.com>", 250)
			c.Cmd("RCPT TO:<b@example.org>", 250)
			c.Cmd("DATA", 354)
			c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", token))))
			r := c.Expect(550)
			if !regexp.MustCompile(`^550 5\.7\.1 test-proxy virus found: \S+`).MatchString(r) {
				t.Fatalf("reply to a virus: %q", r)
			}
			// Takeover: no more mail in this session.
			c.Cmd("MAIL FROM:<a@example.com>", 451)
			c.Quit()
			d.WaitLog(t, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)
			s.pf.NotDelivered(t, token, 2*time.Second)
			// spool_leave_on virus: the spool file stays, readable by
			// nobody but the daemon's user.
			spooled, _ := filepath.Glob(filepath.Join(s.dir, "spool", "*"))
			if len(spooled) != 1 {
				t.Errorf("spool files after a virus with spool_leave_on virus: %v, want 1", spooled)
			} else if b, _ := os.ReadFile(spooled[0]); !strings.HasPrefix(string(b), "X-Proxy-Spool-Info: src=127.0.0.1:") || !strings.Contains(string(b), token) {
				t.Errorf("spool file %s does not hold the header and the message:\n%.300s", spooled[0], b)
			}

			clean := harness.Token(t)
			c = greeted(t, s.addr())
			c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", clean))
			c.Quit()
			s.pf.WaitDelivered(t, clean, 30*time.Second)
		})
	}
}

// GTUBE is refused when its score reaches spam_threshold (and lock_on
// includes spam), and passes when the threshold is above it.
func TestSpamThreshold(t *testing.T) {
	spamd := harness.Spamd(t)
	s := newSetup(t)
	d := s.start(t, "antispam_type spamassassin", "antispam_path "+spamd.Addr, "spam_max_size 1000000", "spam_max_load 0",
		"lock_on virus,spam")
	c := greeted(t, s.addr())
	token := harness.Token(t)
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.SpamMessage("a@example.com", "b@example.org", token))))
	if r := c.Expect(550); !strings.Contains(r, "score 1") {
		t.Fatalf("reply to GTUBE: %q, want 550 with the score", r)
	}
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=spam, `), 10*time.Second)
	s.pf.NotDelivered(t, token, 2*time.Second)

	s2 := newSetup(t)
	s2.start(t, "antispam_type spamassassin", "antispam_path "+spamd.Addr, "spam_max_size 1000000", "spam_max_load 0", "spam_threshold 5000",
		"lock_on virus,spam")
	c = greeted(t, s2.addr())
	token = harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.SpamMessage("a@example.com", "b@example.org", token))
	c.Quit()
	s2.pf.WaitDelivered(t, token, 30*time.Second)
}

// A scanner that cannot be reached: 451 and nothing delivered; with
// ignore_errors the message passes.
func TestScannerDown(t *testing.T) {
	s := newSetup(t)
	gone := filepath.Join(s.dir, "no-clamd.sock")
	d := s.start(t, "antivirus_type clamd", "antivirus_path "+gone, "msg_scanner_failed scanner unavailable", "timeout_scanner 2")
	c := greeted(t, s.addr())
	token := harness.Token(t)
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.Message("a@example.com", "b@example.org", token))))
	if r := c.Expect(451); !strings.Contains(r, "scanner unavailable") {
		t.Fatalf("reply with the scanner down: %q", r)
	}
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=scanner, `), 10*time.Second)
	s.pf.NotDelivered(t, token, 2*time.Second)

	s2 := newSetup(t)
	s2.start(t, "antivirus_type clamd", "antivirus_path "+gone, "ignore_errors yes")
	c = greeted(t, s2.addr())
	token = harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	s2.pf.WaitDelivered(t, token, 30*time.Second)
}
