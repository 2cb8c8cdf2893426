package session

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// The session engine as it runs in a worker, with fake peers (lookup,
// lockd, scanner), a client that sends the fuzzer's bytes, and an MTA
// that answers as the fuzzer says and reads commands as a lenient MTA
// does (Postfix, Exim, sendmail: the verb ends at any C white space or
// NUL). The MTA checks the invariants the proxy exists for:
//
//   - a message body reaches the MTA only after a DATA the proxy saw as
//     DATA: the first line after the MTA's 354 must be the proxy's NAT
//     header, whose name is secret to the client;
//   - BDAT never reaches the MTA (the proxy answers it itself);
//   - the final dot reaches the MTA only after a clean verdict on that
//     message;
//
// and after the session, that the engine's queue stayed within its bounds
// and that the engine ended.

// fakePeers are the worker's peers for the engine under test; it is its
// own scanner link.
type fakePeers struct {
	mu       sync.Mutex
	verdicts []byte // one per scan, consumed in turn: 0 clean, 1 virus, 2 spam, 3 error
	clean    int    // clean verdicts since the last message started at the MTA
	// For table tests: full verdicts (used before verdicts), the kinds
	// of verdict that let the dot go (besides clean; "": any dot goes,
	// for messages that are not scanned), the SPF result,
	// and what was asked.
	full     []*ipc.Verdict
	passes   map[ipc.VerdictKind]bool
	spf      string
	scans    int
	spfAsked int
	// noScanner: there is no scanner process.
	noScanner bool
	found     []string // the events reported
}

func (f *fakePeers) dnsblListed(*conn) string { return "" }
func (f *fakePeers) spfCheck(*conn, *ipc.SpfQuery) (*ipc.SpfAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.spfAsked++
	if f.spf != "" {
		return &ipc.SpfAnswer{Result: f.spf}, nil
	}
	return &ipc.SpfAnswer{Result: "pass"}, nil
}
func (f *fakePeers) askLockd(context.Context, *ipc.Policy) (*ipc.PolicyAnswer, error) {
	return &ipc.PolicyAnswer{}, nil
}
func (f *fakePeers) report(_ *conn, e *ipc.Found) {
	f.mu.Lock()
	f.found = append(f.found, e.Event)
	f.mu.Unlock()
}
func (f *fakePeers) scanLink() scanLink {
	if f.noScanner {
		return nil
	}
	return f
}
func (f *fakePeers) scanStart(*ipc.ScanStart, int) error { return nil }
func (f *fakePeers) scanAbort(*ipc.ScanAbort)            {}
func (f *fakePeers) scan(_ context.Context, _ ipc.Type, _ *ipc.Scan, _ int) (*ipc.Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scans++
	if len(f.full) > 0 {
		v := f.full[0]
		f.full = f.full[1:]
		if v.Kind == ipc.VerdictClean || f.passes[v.Kind] {
			f.clean++
		}
		return v, nil
	}
	kind := ipc.VerdictClean
	if len(f.verdicts) > 0 {
		kind = [...]ipc.VerdictKind{ipc.VerdictClean, ipc.VerdictVirus, ipc.VerdictSpam, ipc.VerdictError}[f.verdicts[0]%4]
		f.verdicts = f.verdicts[1:]
	}
	if kind == ipc.VerdictClean {
		f.clean++
	}
	v := &ipc.Verdict{Kind: kind}
	switch kind {
	case ipc.VerdictVirus:
		v.Name = "Fuzz-Test-Signature"
	case ipc.VerdictError:
		v.Err = "fuzz"
	}
	return v, nil
}

// newMessage is the MTA starting a message: earlier verdicts count no more.
func (f *fakePeers) newMessage() {
	f.mu.Lock()
	f.clean = 0
	f.mu.Unlock()
}

// takeClean is the MTA at a final dot: was there a clean verdict?
func (f *fakePeers) takeClean() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.passes[""] {
		return true // the table test knows the message is not scanned
	}
	if f.clean == 0 {
		return false
	}
	f.clean--
	return true
}

// natName is the NAT header's name: random, so that no client input can
// forge it.
var natName = func() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "X-Fz-" + hex.EncodeToString(b)
}()

// hugeReply is a reply over the engine's bound (smtp.MaxReplyBytes).
var hugeReply = strings.Repeat("250-"+strings.Repeat("x", 250)+"\r\n", 300) + "250 end\r\n"

// lenientVerb is the verb of a command line as a lenient MTA reads it:
// the line ends at a NUL, leading white space is skipped, the verb ends
// at any C white space, and case does not matter.
func lenientVerb(line []byte) string {
	if i := bytes.IndexByte(line, 0); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimLeft(line, " \t\n\v\f\r")
	if i := bytes.IndexAny(line, " \t\n\v\f\r"); i >= 0 {
		line = line[:i]
	}
	return strings.ToUpper(string(line))
}

// mtaModel is the MTA side of a fuzzed session.
type mtaModel struct {
	conn   *net.TCPConn
	script []byte // one byte chooses each reply; 0 when used up
	header string // the NAT header's name; "" when not checked
	peers  *fakePeers
	authOK bool // AUTH gets 235

	mu         sync.Mutex
	violations []string
}

func (m *mtaModel) violate(format string, a ...any) {
	m.mu.Lock()
	m.violations = append(m.violations, fmt.Sprintf(format, a...))
	m.mu.Unlock()
}

func (m *mtaModel) next() byte {
	if len(m.script) == 0 {
		return 0
	}
	b := m.script[0]
	m.script = m.script[1:]
	return b
}

func (m *mtaModel) run() {
	defer m.conn.Close()
	br := bufio.NewReader(m.conn)
	say := func(s string) bool {
		m.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, err := io.WriteString(m.conn, s)
		return err == nil
	}
	if !say("220 mta.test ESMTP\r\n") {
		return
	}
	var body, first, silent, opaque bool
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		switch {
		case opaque || silent:
			continue
		case body:
			if first {
				first = false
				if m.header != "" && !bytes.HasPrefix(line, []byte(m.header+": ")) {
					m.violate("a message body reached the MTA after a DATA the proxy did not see as DATA: %q", line)
				}
			}
			if string(line) == ".\r\n" || string(line) == ".\n" {
				body = false
				if !m.peers.takeClean() {
					m.violate("the final dot reached the MTA without a clean verdict")
				}
				if m.next()%4 == 3 {
					say("554 5.7.1 rejected\r\n")
				} else {
					say("250 2.0.0 Ok: queued\r\n")
				}
			}
			continue
		}
		sel := m.next()
		r := ""
		switch verb := lenientVerb(line); {
		case verb == "DATA" && sel%4 != 3:
			body, first = true, true
			m.peers.newMessage()
			r = "354 End data with <CR><LF>.<CR><LF>\r\n"
		case verb == "DATA":
			r = "554 5.5.1 No valid recipients\r\n"
		case verb == "BDAT":
			m.violate("BDAT reached the MTA: %q", line)
			r = "250 2.0.0 Ok\r\n"
		case verb == "QUIT":
			say("221 2.0.0 Bye\r\n")
			return
		case verb == "AUTH" && m.authOK:
			r = "235 2.7.0 Authentication successful\r\n"
		case verb == "STARTTLS" && sel%2 == 0:
			// What follows would be TLS: the proxy passes it untouched.
			opaque = true
			r = "220 2.0.0 Ready to start TLS\r\n"
		case (verb == "EHLO" || verb == "HELO") && sel%8 < 4:
			r = "250-mta.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 ENHANCEDSTATUSCODES\r\n"
		case sel == 255:
			r = hugeReply
		default:
			switch sel % 8 {
			case 3:
				r = "250-first\r\n250 2.0.0 last\r\n"
			case 4:
				r = "550 5.0.0 no\r\n"
			case 5:
				say("421 4.3.0 closing\r\n")
				return
			case 6:
				silent = true // never answers again
			case 7:
				r = "451 4.3.0 later\r\n"
			default:
				r = "250 2.0.0 Ok\r\n"
			}
		}
		if r != "" && !say(r) {
			return
		}
	}
}

// loopPair is a connected pair of loopback TCP sockets.
func loopPair() (a, b *net.TCPConn, err error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	a, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, nil, err
	}
	b, err = ln.AcceptTCP()
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// fuzzCase is one session's input.
type fuzzCase struct {
	client   []byte // what the client sends, at once
	mta      []byte // the MTA's choice of each reply
	verdicts []byte // the scanner's verdicts
	flags    uint8  // configuration (fuzzConfig)
	noHeader bool   // no NAT header: the MTA cannot check the first invariant
	keepOpen bool   // the client does not close its side after its bytes (needs QUIT)

	// For table tests: changes to the configuration, to the peers, the
	// spool directory (the shared one if empty), and an MTA that
	// accepts AUTH (235).
	config   func(*config.Config)
	peers    func(*fakePeers)
	spoolDir string
	authOK   bool
	done     func(*engine) // called after the session
}

// fuzzSpool is the spool directory of the fuzzed sessions.
var fuzzSpool struct {
	once sync.Once
	s    *spool
	dir  string
}

// fuzzLog is the engine's log.
var fuzzLog = logx.Discard()

// fuzzConfig is the configuration flags choose.
func fuzzConfig(flags uint8, noHeader bool) *config.Config {
	cfg := config.Default()
	cfg.Mode = config.ModeFixed
	cfg.ProxyName = "proxy.test"
	cfg.Earlytalker = false
	cfg.TimeoutIdle = 5
	cfg.TimeoutSession = 5
	cfg.NatHeader = natName
	cfg.NatHeaderType = config.NatHeaderIPOnly
	if flags&1 != 0 {
		cfg.NatHeaderType = config.NatHeaderGeneric
	}
	if noHeader {
		cfg.NatHeaderType = config.NatHeaderNone
	}
	cfg.AntivirusType = config.AntivirusClamd
	// Spam is refused, so that only a clean verdict lets a dot go.
	cfg.LockOn = config.LockVirus | config.LockSpam
	cfg.ScanStream = config.ScanStreamNo
	if flags&2 != 0 {
		cfg.ScanStream = config.ScanStreamYes
	}
	cfg.PipelineSize = [...]uint64{128, 1, 2, 4, 0, 3, 8, 128}[flags>>2&7]
	if flags&32 != 0 {
		cfg.SizeLimit = 200
	}
	return cfg
}

// proxyFunc runs a proxy between a client and an MTA connection until the
// session ends. It returns the longest its queue was and the bound it
// must stay within (0: not checked).
type proxyFunc func(t testing.TB, fc *fuzzCase, p *fakePeers, cli, srv *net.TCPConn) (peak, bound int)

// engineProxy is the session engine under test.
func engineProxy(t testing.TB, fc *fuzzCase, p *fakePeers, cli, srv *net.TCPConn) (peak, bound int) {
	fuzzSpool.once.Do(func() {
		dir, err := os.MkdirTemp("", "sgfuzz-")
		if err != nil {
			panic(err)
		}
		fuzzSpool.dir = dir
		fuzzSpool.s = prepareSpool(dir, 0o600, -1, -1)
	})
	cfg := fuzzConfig(fc.flags, fc.noHeader)
	if fc.config != nil {
		fc.config(cfg)
	}
	w := &worker{log: fuzzLog, spool: fuzzSpool.s}
	if fc.spoolDir != "" {
		w.spool = prepareSpool(fc.spoolDir, 0o600, -1, -1)
	}
	w.cfg.Store(cfg)
	c := &conn{id: 1, cfg: cfg, client: cli, start: time.Now(), by: "error",
		src: cli.RemoteAddr().(*net.TCPAddr).AddrPort(),
		dst: srv.RemoteAddr().(*net.TCPAddr).AddrPort()}
	c.local = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 25)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	defer c.cancel()
	e := newEngine(w, c, srv)
	e.p = p
	e.run()
	if fc.done != nil {
		fc.done(e)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	fwd := int(cfg.PipelineSize)
	if fwd == 0 {
		fwd = e.fwdCap
	}
	return e.peak, e.waitCap + fwd + 2
}

// blindRelay is a proxy that understands nothing: bytes pass both ways.
// The harness must catch it.
func blindRelay(t testing.TB, fc *fuzzCase, p *fakePeers, cli, srv *net.TCPConn) (int, int) {
	relay(cli, srv, 5*time.Second)
	return 0, 0
}

// runCase runs one session through proxy and returns the violations the
// MTA saw and what the client received.
func runCase(t testing.TB, fc *fuzzCase, proxy proxyFunc) (violations []string, got []byte) {
	client, proxyCli, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	proxySrv, mtaSide, err := loopPair()
	if err != nil {
		proxyCli.Close()
		t.Fatal(err)
	}
	peers := &fakePeers{verdicts: fc.verdicts}
	if fc.peers != nil {
		fc.peers(peers)
	}
	m := &mtaModel{conn: mtaSide, script: fc.mta, peers: peers, header: natName, authOK: fc.authOK}
	if fc.noHeader {
		m.header = ""
	}
	mtaDone := make(chan struct{})
	go func() { defer close(mtaDone); m.run() }()

	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		io.Copy(&out, io.LimitReader(client, 1<<20))
		io.Copy(io.Discard, client)
	}()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		client.SetWriteDeadline(time.Now().Add(10 * time.Second))
		client.Write(fc.client)
	}()

	type result struct{ peak, bound int }
	ran := make(chan result, 1)
	go func() {
		defer proxyCli.Close()
		defer proxySrv.Close()
		peak, bound := proxy(t, fc, peers, proxyCli, proxySrv)
		ran <- result{peak, bound}
	}()
	// The client has said everything. A session that does not end by
	// itself (no QUIT) is ended by the client closing its side a moment
	// later, when the dialogue had time to flow through; one that waits
	// for the MTA instead (which stays silent) is ended by the MTA
	// closing; then the engine must end at once. How long is waited
	// decides only how far a session gets, not whether a violation
	// counts.
	var res result
	wait := func(d time.Duration) bool {
		select {
		case res = <-ran:
			return true
		case <-time.After(d):
			return false
		}
	}
	if !wait(20 * time.Millisecond) {
		if !fc.keepOpen {
			client.CloseWrite()
		}
		if !wait(20 * time.Millisecond) {
			mtaSide.Close()
			if !wait(10 * time.Second) {
				t.Fatalf("the engine did not end after both sides closed")
			}
		}
	}
	// The engine closed its side: the client reads to the end.
	select {
	case <-readDone:
	case <-time.After(5 * time.Second):
		t.Fatalf("the client's connection stayed open after the session")
	}
	client.Close()
	mtaSide.Close()
	<-wrote
	<-mtaDone
	m.mu.Lock()
	violations = append(violations, m.violations...)
	m.mu.Unlock()
	if res.bound > 0 && res.peak > res.bound {
		violations = append(violations, fmt.Sprintf("the queue held %d commands, over its bound %d", res.peak, res.bound))
	}
	return violations, out.Bytes()
}

// fuzzSeeds are whole dialogues, one per shape of session.
var fuzzSeeds = []fuzzCase{
	{client: []byte("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n")},
	{client: []byte("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nhello\r\n.\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nagain\r\n.\r\nQUIT\r\n"), verdicts: []byte{1}},
	{client: []byte("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n"), verdicts: []byte{3}, flags: 2},
	{client: []byte("HELO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nRCPT TO:<c@m.test>\r\nDATA\r\n" + strings.Repeat("0123456789abcdef\r\n", 20) + ".\r\nQUIT\r\n"), flags: 32},
	{client: []byte("EHLO c.test\r\nBDAT 5 LAST\r\nhelloRSET\r\nSTARTTLS\r\nDATA\r\nx\r\n.\r\n")},
	{client: []byte("EHLO c.test\r\n" + strings.Repeat("NOOP\r\n", 2000) + "QUIT\r\n"), mta: []byte{0, 6}, flags: 4 << 2},
	{client: []byte("EHLO c.test\r\n" + strings.Repeat("NOOP\r\n", 500)), mta: []byte{0, 6}, flags: 1 << 2},
	{client: []byte("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nNOOP\r\n"), mta: []byte{0, 255}},
	{client: []byte("EHLO c.test\r\nAUTH PLAIN\r\nAHVzZXIAcGFzcw==\r\nMAIL FROM:<a@c.test>\r\nQUIT\r\n")},
	{client: []byte("EHLO c.test\nMAIL FROM:<a@c.test>\nRCPT TO:<b@m.test>\nDATA\nbare\nlf\n.\nQUIT\n")},
}

// FuzzEngine runs the session engine on the fuzzer's client bytes, MTA
// replies, verdicts and configuration, and fails on any violation of the
// invariants (see the top of this file).
func FuzzEngine(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s.client, s.mta, s.verdicts, s.flags)
	}
	f.Fuzz(func(t *testing.T, client, mta, verdicts []byte, flags uint8) {
		if len(client) > 256<<10 {
			return
		}
		fc := &fuzzCase{client: client, mta: mta, verdicts: verdicts, flags: flags}
		v, _ := runCase(t, fc, engineProxy)
		if len(v) > 0 {
			t.Fatalf("%d violations, the first: %s", len(v), v[0])
		}
	})
}

// The harness catches what it exists to catch: a proxy that relays a
// message without seeing it (the body reaches the MTA; without the header
// check, the final dot comes without a verdict) is caught, and the
// engine on the same dialogue is not.
func TestFuzzHarness(t *testing.T) {
	dialogue := fuzzSeeds[0] // ends with QUIT
	dialogue.keepOpen = true
	if v, _ := runCase(t, &dialogue, engineProxy); len(v) > 0 {
		t.Fatalf("the engine: %q", v)
	}
	v, _ := runCase(t, &dialogue, blindRelay)
	if len(v) == 0 || !strings.Contains(v[0], "did not see as DATA") {
		t.Errorf("a blind relay: %q, want the body caught", v)
	}
	noHeader := dialogue
	noHeader.noHeader = true
	v, _ = runCase(t, &noHeader, blindRelay)
	if len(v) == 0 || !strings.Contains(v[0], "without a clean verdict") {
		t.Errorf("a blind relay, no header: %q, want the dot caught", v)
	}
	bdat := fuzzSeeds[4]
	bdat.client = append(bdat.client, "QUIT\r\n"...)
	bdat.keepOpen = true
	v, _ = runCase(t, &bdat, blindRelay)
	if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), "BDAT reached the MTA") {
		t.Errorf("a blind relay, BDAT: %q, want BDAT caught", v)
	}
	// The engine with a virus: no dot, and the client is told.
	virus := fuzzSeeds[1]
	virus.keepOpen = true
	v, got := runCase(t, &virus, engineProxy)
	if len(v) > 0 || !bytes.Contains(got, []byte("550 5.7.1 ")) {
		t.Errorf("virus: violations %q, client got:\n%s", v, got)
	}
}

// A reply of the MTA over the bound ends the MTA link; the client gets a
// 421.
func TestMTAReplyTooLong(t *testing.T) {
	fc := &fuzzCase{client: []byte("EHLO c.test\r\nNOOP\r\n"), mta: []byte{0, 255}, keepOpen: true}
	v, got := runCase(t, fc, engineProxy)
	if len(v) > 0 {
		t.Fatal(v)
	}
	if !bytes.Contains(got, []byte("\r\n421 4.4.2 proxy.test ")) || bytes.Contains(got, []byte("250 end")) {
		t.Errorf("client got:\n%.300s", got)
	}
}

// A client that pipelines NOOPs to an MTA that answers none after EHLO:
// the queue holds at most pipeline_size forwarded commands and twice as
// many replies of the proxy's own, and the client is not read past that.
// (pipeline_size 0 never reaches the engine: the configuration raises it
// to 16.)
func TestQueueBounded(t *testing.T) {
	for _, flags := range []uint8{0, 1 << 2, 2 << 2} {
		fc := &fuzzCase{client: []byte("EHLO c.test\r\n" + strings.Repeat("NOOP\r\n", 20000)), mta: []byte{0, 6}, flags: flags, keepOpen: true}
		size := fuzzConfig(flags, false).PipelineSize
		want := int(3 * size)
		var peak int
		v, _ := runCase(t, fc, func(t testing.TB, fc *fuzzCase, p *fakePeers, cli, srv *net.TCPConn) (int, int) {
			var bound int
			peak, bound = engineProxy(t, fc, p, cli, srv)
			return peak, bound
		})
		if len(v) > 0 {
			t.Errorf("pipeline_size %d: %q", size, v)
		}
		if peak != want {
			t.Errorf("pipeline_size %d: the queue peaked at %d, want %d", size, peak, want)
		}
	}
}

func TestQueueCaps(t *testing.T) {
	for _, tt := range []struct {
		size      uint64
		wait, fwd int
	}{{0, 128, 4096}, {1, 2, 4096}, {128, 256, 4096}, {2047, 4094, 4096}, {2048, 4096, 4096}, {1 << 63, 4096, 4096}} {
		if w, f := queueCaps(tt.size); w != tt.wait || f != tt.fwd {
			t.Errorf("queueCaps(%d) = %d, %d; want %d, %d", tt.size, w, f, tt.wait, tt.fwd)
		}
	}
}
