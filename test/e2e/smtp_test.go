package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"smtp-gated/test/harness"
)

// STARTTLS accepted by Postfix: the session becomes a direct proxy, TLS
// runs end to end with Postfix's own certificate, and the message still
// arrives.
func TestStartTLSDirect(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	c := greeted(t, s.addr())
	pem, err := os.ReadFile(s.pf.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c.StartTLS(&tls.Config{RootCAs: pool, ServerName: "peers.localdomain"})
	if _, ok := c.Conn().(*tls.Conn); !ok {
		t.Fatal("not talking TLS after STARTTLS")
	}
	c.Ehlo("client.test")
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	path := s.pf.WaitDelivered(t, token, 30*time.Second)
	got, _ := os.ReadFile(path)
	if !bytes.Contains(got, []byte("(using TLS")) {
		t.Errorf("Postfix's Received header does not show TLS:\n%s", got)
	}
	if bytes.Contains(got, []byte("X-Nat-Received")) {
		t.Errorf("a direct (TLS) session got the proxy's header: the proxy cannot see inside TLS")
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE:DIRECT by=`), 10*time.Second)
}

// AUTH PLAIN through the proxy: accepted (235) and rejected (535), and the
// flags in the CLOSE line.
func TestAuth(t *testing.T) {
	s := newSetup(t)
	d := s.start(t, "auth_require mandatory", "msg_auth_required authenticate first")
	c := greeted(t, s.addr())
	if r := c.Cmd("MAIL FROM:<a@example.com>", 530); !strings.Contains(r, "authenticate first") {
		t.Fatalf("MAIL before AUTH: %q", r)
	}
	c.AuthPlain(s.pf.User, "wrong", 535)
	c.AuthPlain(s.pf.User, s.pf.Pass, 235)
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	path := s.pf.WaitDelivered(t, token, 30*time.Second)
	got, _ := os.ReadFile(path)
	if !bytes.Contains(got, []byte("Authenticated sender")) && !bytes.Contains(got, []byte("ESMTPSA")) {
		t.Errorf("Postfix does not record the authenticated session:\n%s", got)
	}
	// 1 advertised + 2 accepted + 4 rejected once.
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=\w+, .* auth=7, `), 10*time.Second)
}

// fixed+xclient: Postfix sees the client's own address.
func TestXclient(t *testing.T) {
	s := newSetup(t)
	s.start(t, "mode fixed+xclient")
	c := harness.Dial(t, s.addr())
	c.Expect(220)
	exts := c.Ehlo("client.test")
	for _, e := range exts {
		if strings.HasPrefix(strings.ToUpper(e), "XCLIENT") {
			t.Errorf("XCLIENT advertised to the client: %q", e)
		}
	}
	c.Cmd("XCLIENT ADDR=192.0.2.99", 502)
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	path := s.pf.WaitDelivered(t, token, 30*time.Second)
	got, _ := os.ReadFile(path)
	// The Received header Postfix writes names the client as XCLIENT
	// said: the address the proxy saw, 127.0.0.1, as unknown name.
	if !regexp.MustCompile(`Received: from client\.test \(unknown \[127\.0\.0\.1\]\)`).Match(got) {
		t.Errorf("Postfix's Received header does not show the XCLIENT address:\n%s", got)
	}
}

// A pipelined message to many recipients, one of which Postfix refuses,
// and five transactions in one session.
func TestPipelinedRecipientsAndTransactions(t *testing.T) {
	s := newSetup(t)
	d := s.start(t)
	c := greeted(t, s.addr())
	var rcpts []string
	for i := range 20 {
		rcpts = append(rcpts, fmt.Sprintf("r%d@example.org", i))
	}
	token := harness.Token(t)
	msg := harness.Message("a@example.com", "r0@example.org", token)
	// Pipelined by hand: MAIL, 20 RCPTs, one refused, DATA in one write.
	var b strings.Builder
	b.WriteString("MAIL FROM:<a@example.com>\r\n")
	for i, r := range rcpts {
		if i == 7 {
			b.WriteString("RCPT TO:<reject@example.org>\r\n")
		}
		b.WriteString("RCPT TO:<" + r + ">\r\n")
	}
	b.WriteString("DATA\r\n")
	c.Send(b.String())
	c.Expect(250)
	for i := range rcpts {
		if i == 7 {
			c.Expect(550)
		}
		c.Expect(250)
	}
	c.Expect(354)
	c.Send(string(harness.DotStuff(msg)))
	c.Expect(250)
	for i := 1; i < 5; i++ {
		tok := fmt.Sprintf("%s-%d", token, i)
		c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", tok))
	}
	c.Quit()
	s.pf.WaitDelivered(t, token, 30*time.Second)
	for i := 1; i < 5; i++ {
		s.pf.WaitDelivered(t, fmt.Sprintf("%s-%d", token, i), 30*time.Second)
	}
	d.WaitLog(t, regexp.MustCompile(`CLOSE by=\w+, rcv=\d+/\d+, trns=5, rcpts=24, `), 10*time.Second)
}

// A 20 MB message arrives byte for byte.
func TestLargeMessage(t *testing.T) {
	s := newSetup(t)
	s.start(t, "scan_max_size 100000000")
	c := greeted(t, s.addr())
	token := harness.Token(t)
	msg := body(token, rand.New(rand.NewPCG(3, 4)), 20<<20)
	c.SetTimeout(60 * time.Second)
	c.SendMail("a@example.com", []string{"b@example.org"}, msg)
	c.Quit()
	delivered(t, s.pf, token, msg)
}

// The proxy's header is injected after Postfix's 354 and the spool file
// is gone after a clean message (spool_leave_on error).
func TestNatHeaderAndSpool(t *testing.T) {
	s := newSetup(t)
	s.start(t, "abuse abuse@example.net")
	c := greeted(t, s.addr())
	token := harness.Token(t)
	c.SendMail("a@example.com", []string{"b@example.org"}, harness.Message("a@example.com", "b@example.org", token))
	c.Quit()
	got, _ := os.ReadFile(s.pf.WaitDelivered(t, token, 30*time.Second))
	re := regexp.MustCompile(`(?m)^X-Nat-Received: from \[127\.0\.0\.1\]:\d+ \[ident-empty\]\n\tby test-proxy with TPROXY id \d+\.\d+\n\tabuse-to abuse@example\.net\n`)
	if !re.Match(got) {
		t.Errorf("no X-Nat-Received header as expected:\n%s", got)
	}
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if regexp.MustCompile(`^\d+\.\d+`).MatchString(e.Name()) {
			t.Errorf("spool file %s left after a clean message", e.Name())
		}
	}
}
