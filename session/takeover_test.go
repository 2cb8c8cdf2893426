package session

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// policyPeers are fake peers whose DNSBL, SPF and lockd answers a test
// chooses; scans are those of fakePeers.
type policyPeers struct {
	*fakePeers
	zone, answer string // the DNSBL listing
	spf          string // the SPF result
	lockedAtDot  bool   // lockd says the client is locked before the final dot
}

func (p *policyPeers) dnsblListed(*conn) (string, string) { return p.zone, p.answer }

func (p *policyPeers) spfCheck(*conn, *ipc.SpfQuery) (*ipc.SpfAnswer, error) {
	if p.spf == "" {
		return &ipc.SpfAnswer{Result: "pass"}, nil
	}
	return &ipc.SpfAnswer{Result: p.spf}, nil
}

func (p *policyPeers) askLockd(_ context.Context, q *ipc.Policy) (*ipc.PolicyAnswer, error) {
	return &ipc.PolicyAnswer{Locked: p.lockedAtDot && q.Lock}, nil
}

// recordingMTA answers like Postfix, and records the command lines it
// receives ("<message>" for a message, with "." when its final dot came).
type recordingMTA struct {
	conn *net.TCPConn
	mu   sync.Mutex
	got  []string
}

func (m *recordingMTA) record(s string) {
	m.mu.Lock()
	m.got = append(m.got, s)
	m.mu.Unlock()
}

func (m *recordingMTA) lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.got...)
}

func (m *recordingMTA) run() {
	defer m.conn.Close()
	m.conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(m.conn)
	io.WriteString(m.conn, "220 mta.test ESMTP\r\n")
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		m.record(line)
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch verb {
		case "EHLO":
			io.WriteString(m.conn, "250-mta.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
		case "DATA":
			io.WriteString(m.conn, "354 go ahead\r\n")
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					m.record("<message>")
					return
				}
				if l == ".\r\n" {
					m.record("<message>.")
					break
				}
			}
			io.WriteString(m.conn, "250 2.0.0 Ok: queued\r\n")
		case "QUIT":
			io.WriteString(m.conn, "221 2.0.0 Bye\r\n")
			return
		case "AUTH":
			io.WriteString(m.conn, "235 2.7.0 Authentication successful\r\n")
		default:
			io.WriteString(m.conn, "250 2.0.0 Ok\r\n")
		}
	}
}

// dialogue runs one session of the engine with cfg and peers: the client
// sends its lines at once and reads until the proxy closes. It returns
// the client's reply lines and the MTA's command lines.
func dialogue(t *testing.T, cfg *config.Config, peers peers, client string) (replies, mta []string) {
	t.Helper()
	fuzzSpool.once.Do(func() {
		dir, err := os.MkdirTemp("", "sgfuzz-")
		if err != nil {
			panic(err)
		}
		fuzzSpool.dir = dir
		fuzzSpool.s = prepareSpool(dir, 0o600, -1, -1)
	})
	cli, proxyCli, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	proxySrv, mtaSide, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	m := &recordingMTA{conn: mtaSide}
	mtaDone := make(chan struct{})
	go func() { defer close(mtaDone); m.run() }()

	w := &worker{log: fuzzLog, spool: fuzzSpool.s}
	w.cfg.Store(cfg)
	c := &conn{id: 1, cfg: cfg, client: proxyCli, start: time.Now(), by: "error",
		src: proxyCli.RemoteAddr().(*net.TCPAddr).AddrPort(),
		dst: proxySrv.RemoteAddr().(*net.TCPAddr).AddrPort()}
	c.local = netip.MustParseAddrPort("127.0.0.1:25")
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer c.cancel()
	e := newEngine(w, c, proxySrv)
	e.p = peers
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		defer proxyCli.Close()
		defer proxySrv.Close()
		e.run()
	}()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	// The client waits for the greeting, as it should, then pipelines.
	br := bufio.NewReader(cli)
	greeting, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	replies = append(replies, strings.TrimRight(greeting, "\r\n"))
	io.WriteString(cli, client)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			break
		}
		replies = append(replies, strings.TrimRight(l, "\r\n"))
	}
	cli.CloseWrite() // the client leaves too
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
	<-mtaDone
	return replies, m.lines()
}

func takeoverConfig(t *testing.T, extra ...string) *config.Config {
	t.Helper()
	cfg, err := config.Parse(strings.NewReader("mode fixed\nfixed_server 127.0.0.1\nproxy_name gw\n"+
		"earlytalker no\ntimeout_idle 5\ntimeout_session 5\nnat_header_type none\n"+
		strings.Join(extra, "\n")+"\n"), "test")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func sameLines(got, want []string) bool {
	return strings.Join(got, "\n") == strings.Join(want, "\n")
}

// A command refused by a regex, SPF, or a DNSBL at MAIL FROM ends the
// relayed session as in 1.4: the refusal, QUIT to the MTA, and the
// takeover session, whose MAIL reply is the reason; nothing the client
// sends afterwards reaches the MTA, and the replies to the commands
// before the refused one still come, in order.
func TestRefusalTakesOver(t *testing.T) {
	ehloReply := []string{"250-mta.test", "250-PIPELINING", "250 ENHANCEDSTATUSCODES"}
	for _, tc := range []struct {
		name   string
		cfg    []string
		peers  policyPeers
		client string
		want   []string // client replies after the greeting
		mta    []string // lines the MTA got
	}{{
		name:   "helo regex, first command",
		cfg:    []string{"regex_reject_helo ^bad\\."},
		client: "EHLO bad.example\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nNOOP\r\nQUIT\r\n",
		want: []string{"550 gw Forbidden HELO/EHLO", "451 gw Forbidden HELO/EHLO",
			"503 gw Protocol error", "503 gw Protocol error", "250 OK", "221 gw Signing off."},
		mta: []string{"QUIT"},
	}, {
		name:   "mail regex",
		cfg:    []string{"regex_reject_mail_from ^spam@"},
		client: "EHLO c.test\r\nMAIL FROM:<spam@c.test>\r\nRCPT TO:<b@m.test>\r\nRSET\r\nEHLO c.test\r\nMAIL FROM:<ok@c.test>\r\nQUIT\r\n",
		want: append(append([]string{}, ehloReply...), "550 5.7.1 gw Forbidden MAIL FROM",
			"503 5.5.1 gw Protocol error", "250 2.0.0 OK", "250 2.0.0 gw SMTP Proxy, hello",
			"451 4.3.2 gw Forbidden MAIL FROM", "221 2.0.0 gw Signing off."),
		mta: []string{"EHLO c.test", "QUIT"},
	}, {
		name:   "rcpt regex, pipelined",
		cfg:    []string{"regex_enforce_rcpt_to @m\\.test$"},
		client: "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@other.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nQUIT\r\n",
		want: append(append([]string{}, ehloReply...), "250 2.0.0 Ok", "550 5.7.1 gw Forbidden RCPT TO",
			"503 5.5.1 gw Protocol error", "503 5.5.1 gw Protocol error", "221 2.0.0 gw Signing off."),
		mta: []string{"EHLO c.test", "MAIL FROM:<a@c.test>", "QUIT"},
	}, {
		name:   "spf",
		cfg:    []string{"spf incoming"},
		peers:  policyPeers{spf: "fail"},
		client: "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n",
		want: append(append([]string{}, ehloReply...),
			"550 5.7.1 gw Connection rejected due to SPF, enable SMTP authentication: -",
			"503 5.5.1 gw Protocol error",
			"451 4.3.2 gw Connection rejected due to SPF, enable SMTP authentication",
			"221 2.0.0 gw Signing off."),
		mta: []string{"EHLO c.test", "QUIT"},
	}, {
		name:   "dnsbl at mail",
		cfg:    []string{"dnsbl bl.test", "auth_skip dnsbl"},
		peers:  policyPeers{zone: "bl.test", answer: "127.0.0.2"},
		client: "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n",
		want: append(append([]string{}, ehloReply...),
			"550 5.7.1 gw Connection rejected due to DNSBL: DNSBL: bl.test: 127.0.0.2",
			"451 4.3.2 gw Connection rejected due to DNSBL",
			"221 2.0.0 gw Signing off."),
		mta: []string{"EHLO c.test", "QUIT"},
	}, {
		name:   "auth_skip regex: MAIL and RCPT only",
		cfg:    []string{"auth_skip regex", "regex_reject_mail_from ^spam@", "regex_reject_helo ^bad\\."},
		client: "EHLO c.test\r\nAUTH PLAIN AHVAYwB4\r\nMAIL FROM:<spam@c.test>\r\nEHLO bad.example\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n",
		want: append(append([]string{}, ehloReply...), "235 2.7.0 Authentication successful", "250 2.0.0 Ok",
			"550 5.7.1 gw Forbidden HELO/EHLO", "451 4.3.2 gw Forbidden HELO/EHLO", "221 2.0.0 gw Signing off."),
		mta: []string{"EHLO c.test", "AUTH PLAIN AHVAYwB4", "MAIL FROM:<spam@c.test>", "QUIT"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			peers := tc.peers
			peers.fakePeers = &fakePeers{}
			got, mta := dialogue(t, takeoverConfig(t, tc.cfg...), &peers, tc.client)
			if want := append([]string{"220 mta.test ESMTP"}, tc.want...); !sameLines(got, want) {
				t.Errorf("client got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if !sameLines(mta, tc.mta) {
				t.Errorf("MTA got %q, want %q", mta, tc.mta)
			}
		})
	}
}

// The takeover after a message is refused: MAIL is told why (the virus
// and its name, the spam score, the scanner failure, size_limit), as in
// 1.4.
func TestTakeoverReason(t *testing.T) {
	msg := "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\n" + strings.Repeat("0123456789abcdef\r\n", 20) + ".\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n"
	for _, tc := range []struct {
		name     string
		cfg      []string
		verdicts []byte
		refusal  string
		reason   string
	}{
		{"virus", nil, []byte{1}, "550 5.7.1 gw Malware found (Fuzz-Test-Signature)", "Malware found (Fuzz-Test-Signature)"},
		{"spam", []string{"antispam_type spamassassin", "lock_on spam"}, []byte{2}, "550 5.7.1 gw Message marked as SPAM, denied [0.000000]", "Message marked as SPAM, denied [0.000000]"},
		{"scanner", nil, []byte{3}, "451 4.3.0 gw Scanner failed", "Scanner failed"},
		{"size", []string{"size_limit 100"}, nil, "552 5.3.4 gw Message size limit exceeded", "Message size limit exceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := takeoverConfig(t, append([]string{"antivirus_type clamd"}, tc.cfg...)...)
			got, mta := dialogue(t, cfg, &policyPeers{fakePeers: &fakePeers{verdicts: tc.verdicts}}, msg)
			want := []string{"220 mta.test ESMTP", "250-mta.test", "250-PIPELINING", "250 ENHANCEDSTATUSCODES",
				"250 2.0.0 Ok", "250 2.0.0 Ok", "354 go ahead", tc.refusal, "451 4.3.2 gw " + tc.reason, "221 2.0.0 gw Signing off."}
			if !sameLines(got, want) {
				t.Errorf("client got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, l := range mta {
				if l == "<message>." {
					t.Errorf("the final dot reached the MTA: %q", mta)
				}
			}
		})
	}
}

// A client found locked at the re-check before the final dot gets 451
// and is disconnected, as in 1.4: no takeover session.
func TestLockedAtDot(t *testing.T) {
	cfg := takeoverConfig(t, "lock_duration 60")
	msg := "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n"
	got, mta := dialogue(t, cfg, &policyPeers{fakePeers: &fakePeers{}, lockedAtDot: true}, msg)
	want := []string{"220 mta.test ESMTP", "250-mta.test", "250-PIPELINING", "250 ENHANCEDSTATUSCODES",
		"250 2.0.0 Ok", "250 2.0.0 Ok", "354 go ahead",
		"451 4.4.0 gw You have been banned because of sending virus or SPAM"}
	if !sameLines(got, want) {
		t.Errorf("client got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if want := []string{"EHLO c.test", "MAIL FROM:<a@c.test>", "RCPT TO:<b@m.test>", "DATA", "<message>"}; !sameLines(mta, want) {
		t.Errorf("MTA got %q, want %q", mta, want)
	}
}

// A failed destination look-up: 1.4's greeting, then the takeover
// session, whose MAIL reply says why; no enhanced codes (no MTA offered
// them).
func TestLookupTakeover(t *testing.T) {
	cfg := takeoverConfig(t)
	cli, proxyCli, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	w := &worker{log: fuzzLog}
	w.cfg.Store(cfg)
	c := &conn{id: 1, cfg: cfg, client: proxyCli, start: time.Now(), by: "lookup",
		src: proxyCli.RemoteAddr().(*net.TCPAddr).AddrPort()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer c.cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer proxyCli.Close()
		w.refuseLookup(c, cfg.MsgLookupNotfound)
	}()
	cli.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(cli, "EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n")
	b, _ := io.ReadAll(cli)
	<-done
	want := "220 gw SMTP\r\n250 gw SMTP Proxy, hello\r\n451 gw Lookup failed: Lookup destination not found\r\n221 gw Signing off.\r\n"
	if string(b) != want {
		t.Errorf("client got:\n%s\nwant:\n%s", b, want)
	}
}

// timeout_session bounds the whole takeover session, as in 1.4 and the
// manual ("length of a takeover session"), not the silence between two
// commands: a client that keeps talking is cut off all the same.
func TestTakeoverSessionLength(t *testing.T) {
	cfg := takeoverConfig(t, "timeout_session 1", "on_takeover_cmds 1000")
	cli, proxyCli, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	w := &worker{log: fuzzLog}
	w.cfg.Store(cfg)
	c := &conn{id: 1, cfg: cfg, client: proxyCli, start: time.Now(), by: "lookup",
		src: proxyCli.RemoteAddr().(*net.TCPAddr).AddrPort()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer c.cancel()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer proxyCli.Close()
		w.refuseLookup(c, "Lookup failed")
	}()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				io.WriteString(cli, "NOOP\r\n")
			}
		}
	}()
	cli.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(cli)
	took := time.Since(start)
	<-done
	if !strings.HasSuffix(string(b), "250 OK\r\n421 gw SMTP session timeout. Closing connection\r\n") {
		t.Errorf("client got:\n%s\nwant NOOPs answered, then the 421", b)
	}
	if took > 2500*time.Millisecond {
		t.Errorf("the takeover session lasted %v, want about timeout_session (1 s)", took)
	}
}
