package session

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// The SMTP engine of one session. The client's commands are read on the
// session's goroutine; the MTA's replies on a second one. Every command
// the client sends takes its place in one queue, whether it goes to the
// MTA or the proxy answers it itself, and replies leave the queue in the
// order the commands came: that is what keeps a pipelined dialogue in
// step. The proxy never answers for the MTA what the MTA must answer: a
// 250 to a message comes only from the MTA.

// Auth flags, as in the CLOSE line and the action script.
const (
	authAdvertised = 1
	authAccepted   = 2
	authRejected   = 4
)

// pending is one command waiting for its reply.
type pending struct {
	verb  string
	arg   string
	local []byte      // the proxy's own reply, when the command is not forwarded
	reply *smtp.Reply // the MTA's reply, once it came
	// code, enhanced, text: a reply of the proxy's own made in its turn
	// (local), when whether the MTA offers enhanced codes is known.
	code           int
	enhanced, text string
	done           chan struct{}
}

// engine is the state of one SMTP session between a client and the MTA.
type engine struct {
	w    *worker
	p    peers // w, or fakes in a test
	c    *conn
	cfg  *config.Config
	log  *logx.Logger
	name string

	clock *idleClock // timeout_idle (idle.go)
	// cliIdle, srvIdle read the client and the MTA under the clock.
	cliIdle, srvIdle idleReader

	cli *net.TCPConn
	in  *pushback     // under cr; read directly during DATA
	cr  *bufio.Reader // lent by crSrc (buffers.go)
	srv *net.TCPConn
	sr  *bufio.Reader // lent by srSrc
	// crSrc, srSrc: what cr and sr read, and where their buffers go
	// while the session waits for the client or the MTA.
	crSrc, srSrc *lazyReader

	mu      sync.Mutex
	cw      *lazyWriter // to the client; written under mu
	sw      *lazyWriter // to the MTA; written by the client's goroutine
	queue   []*pending
	forward int // commands in the queue awaiting the MTA
	ext     smtp.Extensions
	authed  bool
	direct  bool // switch to direct relay once the queue is flushed
	mtaGone bool // the MTA connection was closed on purpose
	ended   bool
	helo    string
	from    string
	inTrans bool
	srvDone chan struct{} // closed when serverLoop has returned
	srvEnd  bool          // serverLoop has returned (under mu)
	room    *sync.Cond    // on mu: the queue shrank or serverLoop ended
	// waitCap bounds the replies that wait in the queue behind a command
	// forwarded to the MTA; fwdCap the forwarded commands when
	// pipeline_size does not (see fullLocked).
	waitCap, fwdCap int
	peak            int          // the longest the queue was
	rep             logx.Repeats // per-command log lines of the session
	// reason is why the session was taken over (a virus and its name, a
	// regex, a failed destination look-up...): the takeover session's
	// reply to MAIL, as in 1.4; msg_virus_no_more if empty.
	reason string
	// dnsblDone, dnsblZone, dnsblAnswer: the DNSBL check that auth_skip
	// dnsbl moved to the first MAIL FROM (checks.go).
	dnsblDone   bool
	dnsblZone   string
	dnsblAnswer string
	// takenOver: the MTA's replies ended the relayed session (a
	// rejection over its rate limit, policy.go).
	takenOver bool
}

// errTakeover ends the relayed part of a session: the proxy talks to the
// client alone from here.
var errTakeover = errors.New("takeover")

func newEngine(w *worker, c *conn, server *net.TCPConn) *engine {
	cfg := c.cfg
	bufSize := int(cfg.BufferSize)
	if bufSize < 512 {
		bufSize = 512
	}
	clock := newIdleClock(cfg.IdleTimeout())
	cliIdle, srvIdle := newIdleReader(c.client, clock), newIdleReader(server, clock)
	in := &pushback{r: counter{cliIdle, &c.cliRx}}
	crSrc := newLazyReader(cliIdle, in, in, max(bufSize, readSize), &c.cliRx)
	srSrc := newLazyReader(srvIdle, counter{srvIdle, &c.srvRx}, nil, readSize, &c.srvRx)
	e := &engine{
		w: w, p: w, c: c, cfg: cfg, log: w.log, name: cfg.ProxyHostName(), clock: clock,
		cli: c.client, in: in, cr: crSrc.reader(), crSrc: crSrc,
		cliIdle: cliIdle, srvIdle: srvIdle,
		srv: server, sr: srSrc.reader(), srSrc: srSrc,
		cw:      &lazyWriter{w: c.client},
		sw:      &lazyWriter{w: server},
		srvDone: make(chan struct{}),
	}
	e.room = sync.NewCond(&e.mu)
	e.waitCap, e.fwdCap = queueCaps(cfg.PipelineSize)
	return e
}

// maxQueue bounds every part of a session's queue of commands.
const maxQueue = 4096

// queueCaps returns, for pipeline_size, how many replies may wait behind
// a command forwarded to the MTA (twice pipeline_size, 128 when it is 0,
// never more than maxQueue), and how many forwarded commands may await
// the MTA before the client is no longer read when pipeline_size is 0
// and refuses none (maxQueue).
func queueCaps(pipelineSize uint64) (waitCap, fwdCap int) {
	waitCap, fwdCap = 128, maxQueue
	switch {
	case pipelineSize >= maxQueue/2:
		waitCap = maxQueue
	case pipelineSize > 0:
		waitCap = int(2 * pipelineSize)
	}
	return waitCap, fwdCap
}

// maxLine is the longest command line accepted from the client.
func (e *engine) maxLine() int {
	if e.cfg.BufferSize < 512 {
		return 512
	}
	return int(e.cfg.BufferSize)
}

// reply formats a reply of the proxy's own. The enhanced code is given
// only when the MTA advertised ENHANCEDSTATUSCODES.
func (e *engine) reply(code int, enhanced, text string) []byte {
	if !e.ext.Enhanced {
		enhanced = ""
	}
	return smtp.FormatReply(code, enhanced, e.name, text)
}

// setBy records what ended the session; the first cause wins.
func (e *engine) setBy(by ipc.CloseCause) {
	e.mu.Lock()
	if !e.ended {
		e.ended = true
		e.c.by = by
	}
	e.mu.Unlock()
}

// run drives the session after the connection to the MTA is made.
func (e *engine) run() {
	idle := e.cfg.IdleTimeout()
	if !e.greet(idle) {
		return
	}
	go e.serverLoop(idle)
	err := e.clientLoop(idle)
	e.clock.stop()
	if e.isTakenOver() {
		err = errTakeover
	}
	switch {
	case errors.Is(err, errTakeover):
		e.closeMTA()
		e.takeover()
	case errors.Is(err, errDirect):
		e.goDirect()
	case errors.Is(err, errHangUp):
		e.closeMTA()
		e.pushClient()
		smtp.HangUp(e.cli)
	}
	e.closeMTA()
	e.cli.Close()
	<-e.srvDone
	e.crSrc.release(e.cr)
	e.srSrc.release(e.sr)
	e.rep.Summary(e.log, fmt.Sprintf("[%d] ", e.c.id))
}

// isTakenOver reports whether the MTA's replies ended the relayed
// session.
func (e *engine) isTakenOver() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.takenOver
}

// closeMTA drops the MTA connection on purpose (the MTA discards a
// transaction whose final dot it never got).
func (e *engine) closeMTA() {
	e.mu.Lock()
	e.mtaGone = true
	e.mu.Unlock()
	e.srv.Close()
}

// greet reads the MTA's greeting (after the XCLIENT dialogue in
// fixed+xclient mode), refuses an early talker, and relays the greeting.
func (e *engine) greet(idle time.Duration) bool {
	e.srv.SetReadDeadline(time.Now().Add(idle))
	if e.cfg.Mode == config.ModeFixedXclient {
		// Exempt from earlytalker, as in 1.4: the client may have
		// talked during the proxy's own dialogue with the MTA.
		r, ok := e.xclient()
		if !ok {
			return false
		}
		return e.relayGreeting(r)
	}
	if e.cfg.Earlytalker && e.earlyTalker() {
		e.setBy("earlytalker")
		e.log.Eventf(logx.Notice, "FOUND:EARLYTALK src=%v ident=%s, id=%d", e.c.src.Addr(), e.c.ident, e.c.id)
		e.found(config.LockEarlytalker, "")
		e.closeMTA()
		e.cw.Write(e.reply(554, "", e.cfg.MsgEarlytalker))
		e.cw.Flush()
		smtp.HangUp(e.cli)
		return false
	}
	r, err := smtp.ReadReply(e.sr, 4096)
	if err != nil {
		e.setBy("server")
		e.log.Warningf("[%d] no greeting from the MTA: %v", e.c.id, err)
		e.cw.Write(e.reply(421, "4.4.2", e.cfg.MsgCannotConnect))
		e.cw.Flush()
		return false
	}
	return e.relayGreeting(r)
}

func (e *engine) relayGreeting(r *smtp.Reply) bool {
	e.cw.Write(r.Raw())
	if err := e.cw.Flush(); err != nil {
		e.setBy("client")
		return false
	}
	e.c.setState(stHelo)
	return true
}

// earlyTalker waits for the MTA's first byte while it watches the client:
// a complete command line from the client before that byte makes an early
// talker, refused at once, as in 1.4 (like Postfix's postscreen pregreet
// test, with the MTA's own greeting delay as the window). A partial line
// does not, nor a line longer than the buffer; any byte from the MTA, even
// a partial greeting, clears the client. What the client sent stays
// buffered for the session.
func (e *engine) earlyTalker() bool {
	spoke := make(chan struct{})
	go func() {
		defer close(spoke)
		e.sr.Peek(1) // an error is the greeting's read's to see
	}()
	line := make(chan bool, 1)
	go func() { line <- e.clientLine() }()
	select {
	case <-spoke:
		e.cliIdle.interrupt() // stop watching the client
		<-line
		e.cliIdle.resume()
		return false
	case talked := <-line:
		if talked {
			e.srvIdle.interrupt()
			<-spoke
			return true
		}
		// The client left, or sent a line too long to judge: the
		// session goes on and finds out.
		<-spoke
		return false
	}
}

// clientLine reads the client until a complete line is buffered (true),
// buffer_size bytes are without one, or the read fails (false).
func (e *engine) clientLine() bool {
	for {
		n := e.cr.Buffered()
		if n > 0 {
			b, _ := e.cr.Peek(n)
			if bytes.IndexByte(b, '\n') >= 0 {
				return true
			}
			if n >= e.maxLine() {
				return false // longer than buffer_size: not judged, as in 1.4
			}
		}
		if _, err := e.cr.Peek(n + 1); err != nil {
			return false
		}
	}
}

// xclient is the start-up dialogue of fixed+xclient mode: the proxy
// introduces the client to the MTA, and the MTA's greeting after XCLIENT
// is the one the client gets.
func (e *engine) xclient() (*smtp.Reply, bool) {
	fail := func(why string) (*smtp.Reply, bool) {
		e.log.Errf("[%d] XCLIENT with the MTA failed: %s", e.c.id, why)
		e.srv.Write([]byte("QUIT\r\n"))
		e.closeMTA()
		e.setBy("xclient")
		e.cw.Write(e.reply(421, "", e.cfg.MsgFixedXclientFail))
		e.cw.Flush()
		return nil, false
	}
	r, err := smtp.ReadReply(e.sr, 4096)
	if err != nil || r.Code != 220 || !strings.Contains(strings.ToUpper(r.Text()), "ESMTP") {
		return fail(fmt.Sprintf("greeting %q, %v", replyText(r), err))
	}
	fmt.Fprintf(e.srv, "EHLO %s\r\n", e.name)
	r, err = smtp.ReadReply(e.sr, 4096)
	if err != nil || r.Code != 250 {
		return fail(fmt.Sprintf("EHLO: %q, %v", replyText(r), err))
	}
	if ext := smtp.RewriteEHLO(r, nil); !ext.XClient {
		return fail("the MTA does not offer XCLIENT")
	}
	fmt.Fprintf(e.srv, "XCLIENT ADDR=%s NAME=[UNAVAILABLE]\r\n", xclientAddr(e.c))
	r, err = smtp.ReadReply(e.sr, 4096)
	if err != nil || r.Code != 220 {
		return fail(fmt.Sprintf("XCLIENT: %q, %v", replyText(r), err))
	}
	return r, true
}

func xclientAddr(c *conn) string {
	a := c.src.Addr().Unmap()
	if a.Is6() {
		return "IPV6:" + a.String()
	}
	return a.String()
}

func replyText(r *smtp.Reply) string {
	if r == nil {
		return ""
	}
	return r.Text()
}

// enqueue adds a command to the queue. A command with a local reply is
// answered as soon as everything before it is.
func (e *engine) enqueue(p *pending) {
	e.mu.Lock()
	e.queue = append(e.queue, p)
	e.peak = max(e.peak, len(e.queue))
	if p.local == nil {
		e.forward++
	}
	e.flushLocked()
	e.mu.Unlock()
}

// flushLocked moves the replies at the head of the queue that are known
// into the client's buffer, in order. Whoever then has no more input
// ready flushes the buffer (see idle). Called with e.mu held.
func (e *engine) flushLocked() {
	n := len(e.queue)
	defer func() {
		if len(e.queue) < n {
			e.room.Broadcast()
		}
	}()
	for len(e.queue) > 0 {
		p := e.queue[0]
		switch {
		case p.local != nil:
			if p.code != 0 {
				p.local = e.reply(p.code, p.enhanced, p.text)
			}
			e.cw.Write(p.local)
		case p.reply != nil:
			if p.verb != proxyQuit {
				for _, l := range p.reply.Lines {
					e.cw.Write(l)
				}
			}
		default:
			return
		}
		e.queue[0] = nil // not kept alive by the queue's array
		e.queue = e.queue[1:]
		if p.done != nil {
			// Whoever waits for this reply must find it at the client.
			e.flushClient()
			close(p.done)
		}
	}
}

// more reports whether br holds a complete line already: then more
// commands (or replies) follow at once, and writes are better batched.
func more(br *bufio.Reader) bool {
	n := br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := br.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// pushClient flushes the replies buffered for the client.
func (e *engine) pushClient() {
	e.mu.Lock()
	e.flushClient()
	e.mu.Unlock()
}

func (e *engine) flushClient() {
	if e.cw.Buffered() == 0 {
		return
	}
	e.cli.SetWriteDeadline(time.Now().Add(e.cfg.IdleTimeout()))
	e.cw.Flush()
}

// local queues the proxy's own reply to a command it does not forward. It
// is made in its turn: the enhanced code is given if the MTA's reply to
// an EHLO before it offered ENHANCEDSTATUSCODES.
func (e *engine) local(verb string, code int, enhanced, text string) {
	e.enqueue(&pending{verb: verb, local: e.reply(code, enhanced, text), code: code, enhanced: enhanced, text: text})
}

// serverLoop reads the MTA's replies and gives each to the command it
// answers.
func (e *engine) serverLoop(idle time.Duration) {
	defer close(e.srvDone)
	defer func() {
		e.mu.Lock()
		e.srvEnd = true
		e.room.Broadcast()
		e.mu.Unlock()
	}()
	for {
		if !more(e.sr) {
			// The read may wait: the replies batched go out first.
			e.pushClient()
			e.srv.SetReadDeadline(time.Now().Add(idle))
		}
		var r *smtp.Reply
		var err error
		// Waiting for the MTA, the session holds no buffer.
		if e.sr, err = e.srSrc.wait(e.sr); err == nil {
			r, err = smtp.ReadReply(e.sr, 4096)
		}
		e.mu.Lock()
		gone := e.mtaGone
		e.mu.Unlock()
		if gone {
			return
		}
		if err != nil {
			by := ipc.CloseCause("server")
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				// Silence on both sides for timeout_idle (idle.go).
				e.log.Infof("[%d] timeout_idle: no byte from the client or the MTA for %v", e.c.id, idle)
				by = "idle"
			case !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, smtp.ErrBadReply):
				e.log.Warningf("[%d] reading the MTA: %v", e.c.id, err)
			}
			e.setBy(by)
			e.mu.Lock()
			e.flushLocked()
			if errors.Is(err, smtp.ErrBadReply) {
				// What the MTA says cannot be followed (too long, not
				// SMTP): the client is told the link is gone.
				e.log.Warningf("[%d] MTA link ended: %v", e.c.id, err)
				e.cw.Write(e.reply(421, "4.4.2", e.cfg.MsgTransactionFailed))
			}
			e.flushClient()
			e.mu.Unlock()
			e.cli.Close()
			return
		}
		if stop := e.answer(r, e.rejectLimit(r)); stop {
			e.pushClient()
			return
		}
	}
}

// answer gives reply r to the oldest command waiting for the MTA, or,
// when r is a rejection over its rate limit (over names the counter), the
// proxy's refusal. It returns true when the MTA connection leaves the
// SMTP dialogue (STARTTLS or direct proxy after AUTH, or the takeover):
// nothing more is to be read as replies.
func (e *engine) answer(r *smtp.Reply, over string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	var p *pending
	for _, q := range e.queue {
		if q.local == nil && q.reply == nil {
			p = q
			break
		}
	}
	if p == nil {
		// A reply to nothing: the MTA speaking on its own, typically a
		// 421 before it closes. The client gets it.
		e.rep.Logf(e.log, logx.Debug, "unsolicited reply", "[%d] unsolicited reply from the MTA: %q", e.c.id, r.Text())
		e.cw.Write(r.Raw())
		return false
	}
	if r.Code == 354 && p.verb != "DATA" {
		e.unexpectedData(p)
		return true
	}
	if over != "" {
		e.rejectTakeover(p, over)
		return true
	}
	stop := false
	switch p.verb {
	case "EHLO":
		if r.Code == 250 {
			hide := []string{"CHUNKING", "BINARYMIME", "XEXCH50"}
			if e.cfg.Mode == config.ModeFixedXclient {
				hide = append(hide, "XCLIENT")
			}
			e.ext = smtp.RewriteEHLO(r, hide)
			if e.ext.Auth {
				e.c.authFlag.Or(authAdvertised)
			}
		}
	case "MAIL":
		if r.Code/100 == 2 {
			e.inTrans = true
		}
		e.logAddr("MAIL FROM", e.cfg.LogMailFrom, p.arg, r)
	case "RCPT":
		// As 1.4 counted them (rcpts=, RCPTS_TOTAL): 250 only, not 251.
		if r.Code == 250 {
			e.c.rcpts++
		}
		e.logAddr("RCPT TO", e.cfg.LogRcptTo, p.arg, r)
	case "DATA":
		// A transaction is a DATA the MTA answered 354 (trns=,
		// TRANSACTION), whatever then becomes of the message.
		if r.Code == 354 {
			e.c.trns.Add(1)
		}
	case "RSET":
		e.inTrans = false
	case "QUIT":
		if r.Code == 221 {
			e.ended = true
			e.c.by = "quit"
		}
	case "AUTH":
		switch {
		case r.Code == 235:
			e.log.Eventf(logx.Debug, "AUTH:ACCEPT src=%v, ident=%s, id=%d", e.c.src.Addr(), e.c.ident, e.c.id)
			e.authed = true
			e.c.authFlag.Or(authAccepted)
			if e.cfg.AuthSkip.Has(config.AuthSkipDirect) {
				e.direct = true
				stop = true
			}
		case r.Code >= 400:
			e.log.Eventf(logx.Notice, "AUTH:REJECT [%d] src=%v, ident=%s, id=%d", r.Code, e.c.src.Addr(), e.c.ident, e.c.id)
			e.c.authFlag.Or(authRejected)
		}
	case "STARTTLS":
		if r.Code == 220 {
			e.direct = true
			stop = true
		}
	case proxyQuit:
		// The MTA's last word: what it does next is no reply.
		e.mtaGone = true
		stop = true
	}
	e.rateAnswer(p.verb, r.Code)
	p.reply = r
	e.forward--
	e.flushLocked()
	return stop
}

// unexpectedData handles a 354 to a command the proxy did not see as
// DATA: the MTA waits for a message the proxy would not scan. The MTA is
// dropped before it can see an end of message, the command gets 421 and
// the client is closed. Called with e.mu held.
func (e *engine) unexpectedData(p *pending) {
	e.log.Warningf("[%d] the MTA answered 354 to %q, not DATA: MTA connection dropped", e.c.id, p.verb)
	e.mtaGone = true
	e.srv.Close()
	if !e.ended {
		e.ended = true
		e.c.by = "server"
	}
	p.local = e.reply(421, "4.5.0", e.cfg.MsgProtoError)
	e.forward--
	e.flushLocked()
	e.flushClient()
	e.cli.Close()
}

// logAddr logs a MAIL FROM or RCPT TO address per log_mail_from or
// log_rcpt_to.
func (e *engine) logAddr(what string, mask config.LogAddr, arg string, r *smtp.Reply) {
	accepted := r.Code/100 == 2
	if !(accepted && mask.Has(config.LogAddrAccepted)) && !(!accepted && mask.Has(config.LogAddrRejected)) {
		return
	}
	prefix := "FROM:"
	if what == "RCPT TO" {
		prefix = "TO:"
	}
	addr := e.address(arg, prefix)
	if mask.Has(config.LogAddrBase64) {
		sum := md5.Sum([]byte(addr))
		addr = base64.StdEncoding.EncodeToString(sum[:])
	}
	// 1.4's lines, then the session's id.
	switch {
	case what == "RCPT TO":
		e.log.Alwaysf("RCPT TO: %d<%s>, id=%d", r.Code, addr, e.c.id)
	case accepted:
		e.log.Alwaysf("MAIL FROM <%s>, id=%d", addr, e.c.id)
	default:
		e.log.Alwaysf("MAIL FROM <%s> rejected [%d], id=%d", addr, r.Code, e.c.id)
	}
}

// address is the address of a MAIL FROM or RCPT TO argument as 1.4 took
// it: cut to email_length bytes (0: nothing left). The regexes, SPF, the
// log and the action script all see this.
func (e *engine) address(arg, prefix string) string {
	addr, _, _ := smtp.Path(arg, prefix)
	if uint64(len(addr)) > e.cfg.EmailLength {
		addr = addr[:e.cfg.EmailLength]
	}
	return addr
}

// counter counts the bytes read through it (atomically: the status
// query reads the count while the session runs).
type counter struct {
	r io.Reader
	n *atomic.Uint64
}

func (c counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(uint64(n))
	return n, err
}

// pushback is a reader that can be given bytes back: DATA reads the
// socket directly, in large pieces, and what follows the message goes
// back for the command reader.
type pushback struct {
	r    io.Reader
	back []byte
}

func (p *pushback) Read(b []byte) (int, error) {
	if len(p.back) > 0 {
		n := copy(b, p.back)
		p.back = p.back[n:]
		return n, nil
	}
	return p.r.Read(b)
}

func (p *pushback) unread(b []byte) { p.back = append(p.back[:0:0], b...) }
