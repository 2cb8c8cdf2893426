package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// A session's part in locks, rate limits and max_per_ident: the questions
// it asks lockd and master, and the events it reports. lockd keeps the
// files and counts for every worker; master counts idents. What lockd
// cannot answer (killed, restarting) is a 4xx for the client, after a
// bounded wait: never a hang, and never a pass.
//
//	start of the session  lockd: locked? + one connection      554 / 421
//	                      master: ident counted                554 max_per_ident
//	RCPT TO               lockd: one recipient                 552
//	DATA                  lockd: one message, bytes            552
//	AUTH                  lockd: AUTH rejects                  454
//	before the final dot  lockd: locked meanwhile? + bytes     451
//	MTA's 5xx to MAIL/RCPT lockd: one rejection                550, takeover
//	MTA refuses AUTH: counted with the next request (or at the end)
//
// As in 1.4: a recipient and a message count when the command goes to
// the MTA, whatever the MTA answers. ratelimit_bytes and
// ratelimit_auth_rejects, which 1.4 read but never applied, are applied.
//	found (virus, spam, regex, earlytalker, ratelimit, maxident; dnsbl and
//	spf from checks.go): lockd locks per lock_on, runs action_script

// lockdTimeout bounds every call to lockd.
const lockdTimeout = 5 * time.Second

// policy is what a session keeps for lockd.
type policy struct {
	mu sync.Mutex
	// pending are counts the MTA's replies gave (rejections, refunds),
	// told to lockd with the session's next request.
	pending []ipc.Delta
	// size is the size of the message whose final dot waits.
	size int64
	// identCount is the number of sessions from the client's address and
	// ident (master's count), for the action script.
	identCount int
}

func (p *policy) addPending(d ...ipc.Delta) {
	p.mu.Lock()
	p.pending = append(p.pending, d...)
	p.mu.Unlock()
}

func (p *policy) takePending() []ipc.Delta {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.pending
	p.pending = nil
	return d
}

// locking: lock_duration 0 turns locking off.

// rating: ratelimit_period 0 turns rate limits off.

// askLockd sends one Policy request and waits, bounded, for the answer.
// An answer that says lockd could not tell is an error too. A question
// about the lock alone is answered from what the worker kept, when lockd
// found the client unlocked and nothing changed since (lockcache.go).
func (w *worker) askLockd(ctx context.Context, q *ipc.Policy) (*ipc.PolicyAnswer, error) {
	lp := w.lockd.Load()
	if lp == nil {
		return nil, errors.New("lockd: not available")
	}
	var lc *lockCache
	var key lockKey
	var gen uint64
	if q.Lock && len(q.Add)+len(q.Check)+len(q.Take) == 0 {
		if lc = w.lockCacheFor(lp); lc != nil {
			key, gen = lockKey{q.Client.Addr(), q.Ident}, lc.generation()
			if lc.unlocked(key, gen) {
				return &ipc.PolicyAnswer{}, nil
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, lockdTimeout)
	defer cancel()
	m, err := lp.Call(ctx, ipc.MsgPolicy, q, ipc.MsgPolicyAnswer)
	if err != nil {
		return nil, fmt.Errorf("lockd: %w", err)
	}
	a := m.Payload.(*ipc.PolicyAnswer)
	if a.Err != "" {
		return nil, fmt.Errorf("lockd: %s", a.Err)
	}
	if lc != nil && !a.Locked {
		lc.keep(key, gen)
	}
	return a, nil
}

// admitSession applies, once the destination and the ident are known,
// the limits kept outside the worker: max_per_ident (master), then the
// client's lock and its connections rate limit (lockd). Master hears of
// the ident first: lockd serves a session's requests only with the
// client and ident master knows. A refused session gets its early
// reject and false; the caller ends it.
func (w *worker) admitSession(c *conn) bool {
	cfg := c.cfg
	if c.ident != "" && !w.countIdent(c) {
		return false
	}
	if cfg.Locking() || cfg.Rating() {
		q := &ipc.Policy{ID: c.id, Client: c.src, Ident: c.ident, Lock: cfg.Locking()}
		if cfg.Rating() {
			q.Take = []string{ipc.RateConnections}
		}
		a, err := w.askLockd(c.ctx, q)
		switch {
		case err != nil:
			w.log.Errf("[%d] %v: lock and rate limits unknown: %v: refused for now", c.id, c.src, err)
			return earlyReject(c, "lockd", 421, cfg.MsgTempUnavail)
		case a.Locked:
			w.log.Eventf(logx.Notice, "LOCK:LOCKED src=%v, ident=%s, cause=%s, id=%d", c.src.Addr(), identOrDash(c.ident), a.Cause, c.id)
			return earlyReject(c, "lock", 554, cfg.MsgVirusLocked)
		case a.Over != "":
			// As in 1.4, a count that is no rejection locks no one.
			w.log.Noticef("[%d] %v: rate limit %s reached: refused", c.id, c.src, a.Over)
			return earlyReject(c, "ratelimit", 554, cfg.MsgRateReject)
		}
	}
	return true
}

// countIdent tells master the session's ident, which counts it for
// max_per_ident. A session over the limit gets its early reject and
// false.
func (w *worker) countIdent(c *conn) bool {
	cfg := c.cfg
	ctx, cancel := context.WithTimeout(c.ctx, lockdTimeout)
	defer cancel()
	m, err := w.master.Call(ctx, ipc.MsgIdentQuery, &ipc.IdentQuery{ID: c.id, Ident: c.ident}, ipc.MsgIdentAnswer)
	if err != nil {
		w.log.Warningf("[%d] max_per_ident: %v: not counted", c.id, err)
		return true
	}
	a := m.Payload.(*ipc.IdentAnswer)
	if a.Err != "" {
		w.log.Warningf("[%d] max_per_ident: master: %s", c.id, a.Err)
		return true
	}
	c.pol.identCount = a.Count
	if a.Over {
		w.log.Noticef("[%d] %v ident %q: max_per_ident %d reached: refused", c.id, c.src, c.ident, cfg.MaxPerIdent)
		w.found(c, config.LockMaxIdent, c.ident)
		return earlyReject(c, "maxident", 554, cfg.MsgMaxPerIdent)
	}
	return true
}

// earlyReject refuses a session before any greeting, as master refuses
// the connections it does not admit: one reply, FIN, drain, close.
func earlyReject(c *conn, by ipc.CloseCause, code int, text string) bool {
	c.by = by
	c.reply(code, text)
	smtp.HangUp(c.client)
	return false
}

// event is what the session knows of itself for an event report.
func (c *conn) event(event config.LockOn, detail string) *ipc.Found {
	return &ipc.Found{
		Event: event, ID: c.id, Client: c.src, Local: c.local, Target: c.dst,
		Ident: c.ident, IdentCount: c.pol.identCount, Detail: detail,
		Transaction: int(c.trns.Load()), Auth: int(c.authFlag.Load()), Start: c.start.Unix(),
	}
}

// found tells lockd that event (a lock_on bit) happened in session c;
// detail is what it was about (the DNSBL zone, the refused address, ...).
// lockd locks the client when lock_on names the event and runs
// action_script; the lock exists when found returns, so that the refusal
// the caller sends next is already backed by it. found waits at most
// lockdTimeout, and a lockd that cannot be told is logged: the event's
// own refusal goes out all the same.
//
// It is the one way to report an event: engine.found adds what the SMTP
// dialogue knows (HELO, MAIL FROM, recipients).
func (w *worker) found(c *conn, event config.LockOn, detail string) {
	w.report(c, c.event(event, detail))
}

func (w *worker) report(c *conn, f *ipc.Found) {
	c.events.Or(eventBits[f.Event])
	if !c.cfg.WantsEvent(f.Event) {
		return
	}
	lp := w.lockd.Load()
	if lp == nil {
		w.log.Warningf("[%d] %s not told to lockd: not available", c.id, f.Event)
		return
	}
	// Not the session's context: a session killed now still locks.
	ctx, cancel := context.WithTimeout(context.Background(), lockdTimeout)
	defer cancel()
	m, err := lp.Call(ctx, ipc.MsgFound, f, ipc.MsgAck)
	if err != nil {
		w.log.Warningf("[%d] %s not told to lockd: %v", c.id, f.Event, err)
		return
	}
	if a := m.Payload.(*ipc.Ack); a.Err != "" {
		w.log.Warningf("[%d] lockd: %s: %s", c.id, f.Event, a.Err)
	}
}

// identOrDash is an ident as 1.4's LOCK: lines show it: "-" for none.
func identOrDash(ident string) string {
	if ident == "" {
		return "-"
	}
	return ident
}

// eventBits are the events of the status file's counters that a lock_on
// event is.
var eventBits = map[config.LockOn]uint32{
	config.LockSPF:         ipc.EventSPF,
	config.LockRegex:       ipc.EventRegex,
	config.LockEarlytalker: ipc.EventEarlytalk,
	config.LockRatelimit:   ipc.EventRatelimit,
}

// found is worker.found with what the dialogue knows.
func (e *engine) found(event config.LockOn, detail string) {
	e.report(e.c.event(event, detail))
}

// foundMessage reports a virus or spam verdict on the message spooled in
// sp.
func (e *engine) foundMessage(event config.LockOn, v *ipc.Verdict, sp *spoolFile, size int64) {
	f := e.c.event(event, "")
	if event == config.LockVirus {
		if f.Detail = v.Name; f.Detail == "" {
			f.Detail = e.cfg.MsgUnknownVirus
		}
	}
	f.SpamScore, f.Size = v.Score, size
	f.Spool = sp.hostPath()
	e.report(f)
}

func (e *engine) report(f *ipc.Found) {
	e.mu.Lock()
	f.Helo, f.MailFrom, f.Rcpts = e.helo, e.from, e.c.rcpts
	e.mu.Unlock()
	e.p.report(e.c, f)
}

// rateRefused applies the rate limits to a RCPT, DATA or AUTH command
// before it goes to the MTA: RCPT counts a recipient, DATA a message (and
// the bytes of the messages sent must be under their quota), AUTH looks
// at refused authentications. It reports true when it answered the
// command itself.
func (e *engine) rateRefused(verb string) bool {
	cfg := e.cfg
	if !cfg.Rating() {
		return false
	}
	q := &ipc.Policy{ID: e.c.id, Client: e.c.src, Ident: e.c.ident, Add: e.c.pol.takePending()}
	switch verb {
	case "RCPT":
		q.Take = []string{ipc.RateRecipients}
	case "DATA":
		q.Take, q.Check = []string{ipc.RateMessages}, []string{ipc.RateBytes}
	case "AUTH":
		q.Check = []string{ipc.RateAuthRejects}
	}
	a, err := e.p.askLockd(e.c.ctx, q)
	if err != nil {
		e.log.Errf("[%d] %s: rate limits unknown: %v: refused for now", e.c.id, verb, err)
		e.local(verb, 451, "4.3.0", cfg.MsgRatelimitError)
		return true
	}
	if a.Over == "" {
		return false
	}
	e.rep.Logf(e.log, logx.Notice, "rate limit", "[%d] %s refused: rate limit %s reached", e.c.id, verb, a.Over)
	if a.Over == ipc.RateAuthRejects {
		// Rejections are a ratelimit event for lock_on; as in 1.4,
		// the counts of recipients and messages lock no one.
		e.found(config.LockRatelimit, a.Over)
	}
	code, enhanced, text := rateReply(cfg, a.Over)
	e.local(verb, code, enhanced, text)
	return true
}

// rateReply is the reply to a command refused by the rate limit on
// counter name: 1.4's, and for the counters 1.4 did not apply (bytes,
// AUTH rejections) the nearest.
func rateReply(cfg *config.Config, name string) (code int, enhanced, text string) {
	switch name {
	case ipc.RateMessages, ipc.RateBytes:
		return 552, "5.3.2", cfg.MsgRatelimitMessages
	case ipc.RateRecipients:
		return 552, "5.3.2", cfg.MsgRatelimitRcptto
	case ipc.RateMailfromRejects:
		return 550, "5.7.1", cfg.MsgRatelimitMailfromRejects
	case ipc.RateRcpttoRejects:
		return 550, "5.7.1", cfg.MsgRatelimitRcpttoRejects
	case ipc.RateAuthRejects:
		return 454, "4.7.0", cfg.MsgRateReject
	case ipc.RateConnections:
		return 554, "", cfg.MsgRateReject
	}
	return 451, "4.7.1", cfg.MsgRateReject
}

// rateAnswer books what the MTA's reply to AUTH means for the rate
// limits: a refusal is counted with the session's next request. Called
// from answer, with e.mu held.
func (e *engine) rateAnswer(verb string, code int) {
	if e.cfg.Rating() && verb == "AUTH" && code >= 400 {
		e.c.pol.addPending(ipc.Delta{Name: ipc.RateAuthRejects, N: 1})
	}
}

// errHangUp ends a session at once, after the proxy's last reply.
var errHangUp = errors.New("hang up")

// rejectLimit counts a 5xx reply of the MTA to MAIL or RCPT against
// ratelimit_mailfrom_rejects or ratelimit_rcptto_rejects before the reply
// goes on, as 1.4 did. It returns the counter that is over its quota (the
// client is then locked per lock_on, and refused: see rejectTakeover), or
// "". A lockd that cannot tell is logged, and the MTA's own refusal goes
// to the client. Called by serverLoop, without e.mu.
func (e *engine) rejectLimit(r *smtp.Reply) string {
	if !e.cfg.Rating() || r.Code/100 != 5 {
		return ""
	}
	e.mu.Lock()
	verb := ""
	for _, q := range e.queue {
		if q.local == nil && q.reply == nil {
			verb = q.verb // the command r answers
			break
		}
	}
	e.mu.Unlock()
	var name string
	switch verb {
	case "MAIL":
		name = ipc.RateMailfromRejects
	case "RCPT":
		name = ipc.RateRcpttoRejects
	default:
		return ""
	}
	q := &ipc.Policy{ID: e.c.id, Client: e.c.src, Ident: e.c.ident, Add: e.c.pol.takePending(), Take: []string{name}}
	a, err := e.p.askLockd(e.c.ctx, q)
	if err != nil {
		e.log.Errf("[%d] %s refused by the MTA: rejection not counted: %v", e.c.id, verb, err)
		return ""
	}
	if a.Over != "" {
		e.log.Noticef("[%d] %s refused by the MTA: rate limit %s reached: session taken over", e.c.id, verb, a.Over)
		e.found(config.LockRatelimit, a.Over)
	}
	return a.Over
}

// rejectTakeover ends the relayed session when the MTA's refusal p.reply
// would be one too many (rejectLimit): the MTA gets QUIT and is closed,
// the command gets 550 in place of the MTA's reply, and so does every
// command after it that was already on its way to the MTA (QUIT gets
// 221). The client's reader is woken, and the session goes on as a
// takeover session. Called from answer, with e.mu held.
func (e *engine) rejectTakeover(p *pending, over string) {
	code, enhanced, text := rateReply(e.cfg, over)
	e.srv.SetWriteDeadline(time.Now().Add(time.Second))
	e.srv.Write([]byte("QUIT\r\n"))
	e.mtaGone = true
	e.srv.Close()
	if !e.ended {
		e.ended = true
		e.c.by = "ratelimit"
	}
	e.reason = text
	e.takenOver = true
	refusal := e.reply(code, enhanced, text)
	for _, q := range e.queue {
		if q.local != nil || q.reply != nil {
			continue
		}
		q.local = refusal
		if q.verb == "QUIT" {
			q.local = e.reply(221, "", e.cfg.MsgSignOff)
		}
	}
	e.forward = 0
	e.flushLocked()
	// The client's reader stops waiting now (a read already under way is
	// seen to in clientLoop).
	e.clock.stop()
	e.cli.SetReadDeadline(time.Now())
}

// beforeDot runs right before the final dot goes to the MTA: was the
// client locked meanwhile (a virus in another session, smtpgatectl
// lock)? The message's bytes are counted too. When the dot must not go,
// the MTA connection is closed first (the MTA discards the message) and
// the client gets a 451: a locked client is then disconnected, as 1.4
// did (errHangUp); when lockd could not tell, errTakeover ends the
// relayed session.
func (e *engine) beforeDot() error {
	cfg := e.cfg
	if !cfg.Locking() && !cfg.Rating() {
		return nil
	}
	q := &ipc.Policy{ID: e.c.id, Client: e.c.src, Ident: e.c.ident, Lock: cfg.Locking()}
	if cfg.Rating() {
		q.Add = append(e.c.pol.takePending(), ipc.Delta{Name: ipc.RateBytes, N: e.c.pol.size})
	}
	a, err := e.p.askLockd(e.c.ctx, q)
	switch {
	case err != nil:
		e.log.Errf("[%d] before the final dot: %v: message refused for now", e.c.id, err)
		e.closeMTA()
		e.setBy("lockd")
		e.reason = cfg.MsgTempUnavail
		e.local(".", 451, "4.3.0", cfg.MsgTempUnavail)
		return errTakeover
	case a.Locked:
		e.log.Noticef("[%d] %v was locked meanwhile (%s): message refused", e.c.id, e.c.src, a.Cause)
		e.closeMTA()
		e.setBy("lock")
		e.local(".", 451, "4.4.0", cfg.MsgVirusLocked)
		return errHangUp
	}
	return nil
}

// policyEnd tells lockd the counts the session's last replies gave.
func (w *worker) policyEnd(c *conn) {
	d := c.pol.takePending()
	if len(d) == 0 || !c.cfg.Rating() {
		return
	}
	if _, err := w.askLockd(context.Background(), &ipc.Policy{ID: c.id, Client: c.src, Ident: c.ident, Add: d}); err != nil {
		w.log.Warningf("[%d] rate-limit counts of the session's end not told: %v", c.id, err)
	}
}
