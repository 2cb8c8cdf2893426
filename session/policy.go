package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
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
//	MAIL FROM             lockd: messages, bytes, MAIL rejects 451
//	RCPT TO               lockd: recipients, RCPT rejects      452 / 451
//	AUTH                  lockd: AUTH rejects                  454
//	before the final dot  lockd: locked meanwhile? + bytes     451
//	MTA refuses MAIL/RCPT/AUTH: counted with the next request (or at the end)
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
func locking(cfg *config.Config) bool { return cfg.LockDuration != 0 }

// rating: ratelimit_period 0 turns rate limits off.
func rating(cfg *config.Config) bool { return cfg.RatelimitExpiration > 0 }

// askLockd sends one Policy request and waits, bounded, for the answer.
// An answer that says lockd could not tell is an error too.
func (w *worker) askLockd(ctx context.Context, q *ipc.Policy) (*ipc.PolicyAnswer, error) {
	lp := w.lockd.Load()
	if lp == nil {
		return nil, errors.New("lockd: not available")
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
	if locking(cfg) || rating(cfg) {
		q := &ipc.Policy{ID: c.id, Client: c.src, Ident: c.ident, Lock: locking(cfg)}
		if rating(cfg) {
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
			w.log.Noticef("[%d] %v: rate limit %s reached: refused", c.id, c.src, a.Over)
			w.found(c, config.LockRatelimit, a.Over)
			return earlyReject(c, "ratelimit", 554, cfg.MsgRatelimitHelo)
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
	hangUp(c.client)
	return false
}

// scriptEvents are the events that run action_script even when they do
// not lock (the manual's ACTION SCRIPT).
const scriptEvents = config.LockVirus | config.LockSpam | config.LockMaxHost | config.LockMaxIdent

// wantsEvent reports whether lockd does anything with event: a lock
// (lock_on), or the action script.
func wantsEvent(cfg *config.Config, event config.LockOn) bool {
	return (locking(cfg) && cfg.LockOn.Has(event)) || (cfg.ActionScript != "" && scriptEvents.Has(event))
}

// event is what the session knows of itself for an event report.
func (c *conn) event(event config.LockOn, detail string) *ipc.Found {
	return &ipc.Found{
		Event: event.String(), ID: c.id, Client: c.src, Local: c.local, Target: c.dst,
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
	var event config.LockOn
	for _, b := range []config.LockOn{config.LockVirus, config.LockSpam, config.LockMaxHost, config.LockMaxIdent,
		config.LockDNSBL, config.LockSPF, config.LockRegex, config.LockEarlytalker, config.LockRatelimit} {
		if b.String() == f.Event {
			event = b
		}
	}
	c.events.Or(eventBits[event])
	if !wantsEvent(c.cfg, event) {
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

// rateRefused applies the rate limits to a MAIL, RCPT or AUTH command
// before it goes to the MTA: MAIL counts a message (its quota, and those
// of bytes and refused senders, must not be reached), RCPT a recipient
// (and refused recipients), AUTH looks at refused authentications. It
// reports true when it answered the command itself.
func (e *engine) rateRefused(verb string) bool {
	cfg := e.cfg
	if !rating(cfg) {
		return false
	}
	q := &ipc.Policy{ID: e.c.id, Client: e.c.src, Ident: e.c.ident, Add: e.c.pol.takePending()}
	switch verb {
	case "MAIL":
		q.Take, q.Check = []string{ipc.RateMessages}, []string{ipc.RateBytes, ipc.RateMailfromRejects}
	case "RCPT":
		q.Take, q.Check = []string{ipc.RateRecipients}, []string{ipc.RateRcpttoRejects}
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
	e.found(config.LockRatelimit, a.Over)
	code, enhanced, text := rateReply(cfg, a.Over)
	e.local(verb, code, enhanced, text)
	return true
}

// rateReply is the reply to a command refused by the rate limit on
// counter name.
func rateReply(cfg *config.Config, name string) (code int, enhanced, text string) {
	switch name {
	case ipc.RateMessages:
		return 451, "4.7.1", cfg.MsgRatelimitMessages
	case ipc.RateBytes:
		return 451, "4.7.1", cfg.MsgRatelimitMailfrom
	case ipc.RateMailfromRejects:
		return 451, "4.7.1", cfg.MsgRatelimitMailfromRejects
	case ipc.RateRecipients:
		return 452, "4.5.3", cfg.MsgRatelimitRcptto
	case ipc.RateRcpttoRejects:
		return 451, "4.7.1", cfg.MsgRatelimitRcpttoRejects
	case ipc.RateAuthRejects:
		return 454, "4.7.0", cfg.MsgRateReject
	case ipc.RateConnections:
		return 554, "", cfg.MsgRatelimitHelo
	}
	return 451, "4.7.1", cfg.MsgRateReject
}

// rateAnswer books what the MTA's reply to a MAIL, RCPT or AUTH means for
// the rate limits: a refused MAIL or RCPT is a rejection, and gives back
// the message or recipient counted when it went; a refused AUTH is a
// rejection. Called from answer, with e.mu held: the counts go to lockd
// with the session's next request.
func (e *engine) rateAnswer(verb string, code int) {
	if !rating(e.cfg) {
		return
	}
	switch {
	case verb == "MAIL" && code/100 != 2:
		e.c.pol.addPending(ipc.Delta{Name: ipc.RateMessages, N: -1}, ipc.Delta{Name: ipc.RateMailfromRejects, N: 1})
	case verb == "RCPT" && code/100 != 2:
		e.c.pol.addPending(ipc.Delta{Name: ipc.RateRecipients, N: -1}, ipc.Delta{Name: ipc.RateRcpttoRejects, N: 1})
	case verb == "AUTH" && code >= 400:
		e.c.pol.addPending(ipc.Delta{Name: ipc.RateAuthRejects, N: 1})
	}
}

// beforeDot runs right before the final dot goes to the MTA: was the
// client locked meanwhile (a virus in another session, smtpgatectl
// lock)? The message's bytes are counted too. When the dot must not go,
// the MTA connection is closed first (the MTA discards the message), the
// client gets a 451, and errTakeover ends the relayed session.
func (e *engine) beforeDot() error {
	cfg := e.cfg
	if !locking(cfg) && !rating(cfg) {
		return nil
	}
	q := &ipc.Policy{ID: e.c.id, Client: e.c.src, Ident: e.c.ident, Lock: locking(cfg)}
	if rating(cfg) {
		q.Add = append(e.c.pol.takePending(), ipc.Delta{Name: ipc.RateBytes, N: e.c.pol.size})
	}
	a, err := e.p.askLockd(e.c.ctx, q)
	switch {
	case err != nil:
		e.log.Errf("[%d] before the final dot: %v: message refused for now", e.c.id, err)
		e.closeMTA()
		e.setBy("lockd")
		e.local(".", 451, "4.3.0", cfg.MsgTempUnavail)
		return errTakeover
	case a.Locked:
		e.log.Noticef("[%d] %v was locked meanwhile (%s): message refused", e.c.id, e.c.src, a.Cause)
		e.closeMTA()
		e.setBy("lock")
		e.local(".", 451, "4.4.0", cfg.MsgVirusLocked)
		return errTakeover
	}
	return nil
}

// policyEnd tells lockd the counts the session's last replies gave.
func (w *worker) policyEnd(c *conn) {
	d := c.pol.takePending()
	if len(d) == 0 || !rating(c.cfg) {
		return
	}
	if _, err := w.askLockd(context.Background(), &ipc.Policy{ID: c.id, Client: c.src, Ident: c.ident, Add: d}); err != nil {
		w.log.Warningf("[%d] rate-limit counts of the session's end not told: %v", c.id, err)
	}
}
