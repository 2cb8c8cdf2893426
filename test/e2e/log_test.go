package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// At log_level notice, the lines 1.4 wrote whatever the level (NEW,
// CLOSE, CLOSE:DIRECT, HELO, the MAIL FROM and RCPT TO addresses) are
// written at notice, and the event lines start with 1.4's tags and
// fields, this version's after them; nothing below notice is written.
func TestLogLinesAtNotice(t *testing.T) {
	clamd := harness.Clamd(t)
	spamd := harness.Spamd(t)
	s := newSetup(t)
	d := s.start(t, "log_level notice", "lock_on virus,spam", "log_helo yes", "log_mail_from accepted,rejected", "log_rcpt_to accepted,rejected",
		"antivirus_type clamd", "antivirus_path "+clamd.Socket,
		"antispam_type spamassassin", "antispam_path "+spamd.Addr, "spam_max_size 1000000", "spam_max_load 0")
	ip := `127\.0\.0\.1`
	dst := fmt.Sprintf(`dst=127\.0\.0\.1:%d`, s.pf.Port)

	// A virus: the addresses, the verdict, the takeover.
	c := harness.Dial(t, s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	port := c.Conn().LocalAddr().(interface{ String() string }).String()
	port = port[strings.LastIndex(port, ":")+1:]
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("RCPT TO:<reject@example.org>", 550)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.VirusMessage("a@example.com", "b@example.org", harness.Token(t)))))
	c.Expect(550)
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=virus, `), 10*time.Second)

	// Spam.
	c = harness.Dial(t, s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("MAIL FROM:<a@example.com>", 250)
	c.Cmd("RCPT TO:<b@example.org>", 250)
	c.Cmd("DATA", 354)
	c.Send(string(harness.DotStuff(harness.SpamMessage("a@example.com", "b@example.org", harness.Token(t)))))
	c.Expect(550)
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=spam, `), 10*time.Second)

	// A direct session (STARTTLS), ended by the client.
	c = harness.Dial(t, s.addr())
	c.Expect(220)
	c.Ehlo("client.test")
	c.Cmd("STARTTLS", 220)
	c.Close()
	d.WaitLog(t, regexp.MustCompile(`CLOSE:DIRECT by=`), 10*time.Second)

	want := []string{
		`notice: NEW \(1/1\) on=` + ip + fmt.Sprintf(`:%d`, s.port) + `, src=` + ip + `:` + port + `, ident=, ` + dst + `, id=1`,
		`notice: EHLO src=` + ip + `, ident=, helo=client\.test, id=1`,
		`notice: MAIL FROM <a@example\.com>, id=1`,
		`notice: RCPT TO: 250<b@example\.org>, id=1`,
		`notice: RCPT TO: 550<reject@example\.org>, id=1`,
		`notice: SCAN:VIRUS size=\d+, time=\d+, src=` + ip + `, ident=, virus=\S+, id=1, trns=1`,
		`notice: SESSION TAKEOVER: src=` + ip + `, ident=, trns=1, reason=Malware found \(\S+\), id=1`,
		`notice: CLOSE by=virus, rcv=\d+/\d+, trns=1, rcpts=1, auth=1, time=\d+, src=` + ip + `, ident=, src_port=` + port + `, id=1`,
		`notice: NEW \(\d/\d\) on=.*, id=2`,
		`notice: SPAM:FOUND size=\d+, time=\d+, src=` + ip + `, ident=, score=\d+\.\d{6}, id=2, trns=1`,
		`notice: SESSION TAKEOVER: src=` + ip + `, ident=, trns=1, reason=Message marked as SPAM, denied \[\d+\.\d{6}\], id=2`,
		`notice: CLOSE by=spam, rcv=\d+/\d+, trns=1, rcpts=1, auth=1, time=\d+, src=` + ip + `, ident=, src_port=\d+, id=2`,
		`notice: CLOSE:DIRECT by=client rcv=\d+/\d+, time=\d+, src=` + ip + `, ident=, trns=0, rcpts=0, auth=1, src_port=\d+, id=3`,
	}
	lines := d.LogLines()
	next := 0
	for _, l := range lines {
		if next < len(want) && regexp.MustCompile(`^smtp-gated\[\d+\]: `+want[next]+`$`).MatchString(l) {
			next++
		}
		if strings.Contains(l, ": info: ") || strings.Contains(l, ": debug: ") {
			t.Errorf("a line below log_level notice: %q", l)
		}
	}
	if testing.Verbose() {
		t.Logf("log:\n%s", strings.Join(lines, "\n"))
	}
	if next < len(want) {
		t.Errorf("no line /%s/ (in this order) in the log:\n%s", want[next], strings.Join(lines, "\n"))
	}
}

// 1.4's other lines: a connection refused by max_per_host, a failed and
// an accepted AUTH, and the summary at stop.
func TestLogLinesRejectAuthStop(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "log_level debug", "max_per_host 1")
	c := greeted(t, s.addr())
	c2 := harness.Dial(t, s.addr())
	c2.Expect(554)
	c2.Close()
	c.AuthPlain(s.pf.User, "wrong", 535)
	c.AuthPlain(s.pf.User, s.pf.Pass, 235)
	c.Quit()
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=quit, `), 10*time.Second)
	d.Stop(t)

	ip := `127\.0\.0\.1`
	want := []string{
		`info: Rejecting \(host 1\) connection from ` + ip + `:\d+, id=2`,
		`notice: CLOSE by=maxhost, rcv=0/0, trns=0, rcpts=0, auth=0, time=0, src=` + ip + `, ident=, src_port=\d+, id=2`,
		`notice: AUTH:REJECT \[535\] src=` + ip + `, ident=, id=1`,
		`debug: AUTH:ACCEPT src=` + ip + `, ident=, id=1`,
		`info: uptime=0d0h0m\d+s maxchildren=1 crash=0@0 bugs=0@0 found=0/0/0/0 requests=2/0/1 rejects=1/0/0/0/0/0/0/0`,
	}
	lines := d.LogLines()
	next := 0
	for _, l := range lines {
		if next < len(want) && regexp.MustCompile(`^smtp-gated\[\d+\]: `+want[next]+`$`).MatchString(l) {
			next++
		}
	}
	if next < len(want) {
		t.Errorf("no line /%s/ (in this order) in the log:\n%s", want[next], strings.Join(lines, "\n"))
	}
}
