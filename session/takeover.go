package session

import (
	"errors"
	"net"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// takeover is the "fake MTA" session: the MTA connection is gone, and the
// proxy answers the client itself, refusing any new mail, until QUIT,
// on_takeover_cmds commands, or timeout_session, which bounds the whole
// takeover (0: no limit), as in 1.4. The replies are 1.4's: MAIL is told
// why the session was taken over.
func (e *engine) takeover() {
	cfg := e.cfg
	say := func(code int, enhanced, name, text string) {
		e.mu.Lock()
		if !e.ext.Enhanced {
			enhanced = ""
		}
		e.cw.Write(smtp.FormatReply(code, enhanced, name, text))
		e.flushClient()
		e.mu.Unlock()
	}
	e.c.setState(stTakeover)
	e.pushClient() // the reply that started the takeover
	// MAIL is answered with the reason the takeover started.
	e.mu.Lock()
	reason := cfg.MsgVirusNoMore
	if e.reason != "" {
		reason = e.reason
	}
	e.mu.Unlock()
	e.log.Eventf(logx.Notice, "SESSION TAKEOVER: src=%v, ident=%s, trns=%d, reason=%s, id=%d",
		e.c.src.Addr(), e.c.ident, e.c.trns.Load(), reason, e.c.id)
	e.cli.SetReadDeadline(config.Deadline(cfg.SessionTimeout()))
	for n := 1; ; n++ {
		line, tooLong, err := smtp.ReadLine(e.cr, e.maxLine())
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				say(421, "4.4.2", e.name, cfg.MsgSessionTimeout)
			}
			return
		}
		if uint64(n) > cfg.OnTakeoverCmds {
			say(554, "5.5.0", e.name, cfg.MsgTransactionFailed)
			return
		}
		if tooLong {
			say(500, "5.5.2", e.name, cfg.MsgProtoError)
			continue
		}
		cmd, err := smtp.ParseCommand(line)
		if err != nil {
			e.log.Noticef("[%d] command line refused: %v", e.c.id, err)
			say(500, "5.5.2", e.name, cfg.MsgProtoError)
			continue
		}
		// As 1.4: QUIT, NOOP, RSET and DATA alone; HELO and EHLO with an
		// argument; MAIL and RCPT whatever follows.
		switch bare := cmd.Arg == ""; {
		case cmd.Verb == "QUIT" && bare:
			say(221, "2.0.0", e.name, cfg.MsgSignOff)
			return
		case (cmd.Verb == "NOOP" || cmd.Verb == "RSET") && bare:
			say(250, "2.0.0", "", "OK")
		case (cmd.Verb == "HELO" || cmd.Verb == "EHLO") && !bare:
			say(250, "2.0.0", e.name, cfg.MsgHello)
		case cmd.Verb == "MAIL":
			say(451, "4.3.2", e.name, reason)
		case cmd.Verb == "RCPT", cmd.Verb == "DATA" && bare:
			say(503, "5.5.1", e.name, cfg.MsgProtoError)
		default:
			say(502, "5.5.2", e.name, cfg.MsgUnimplCommand)
		}
	}
}

// proxyQuit is the verb of the QUIT the proxy sends the MTA itself
// before it takes a session over: its reply is not for the client.
const proxyQuit = "QUIT (proxy)"

// refuse answers a command the proxy refuses and ends the relayed session
// as 1.4 did (regex, SPF, DNSBL at MAIL FROM): the refusal goes to the
// client in its turn, the MTA gets QUIT, and the proxy takes the session
// over; reason is the takeover's reply to MAIL. Nothing the client sends
// from here on reaches the MTA.
func (e *engine) refuse(verb string, by ipc.CloseCause, code int, enhanced, text, reason string) error {
	e.setBy(by)
	e.reason = reason
	e.local(verb, code, enhanced, text)
	e.quitMTA()
	return errTakeover
}

// quitMTA says QUIT to the MTA after the commands already forwarded, and
// waits at most timeout_idle for its reply, so that the client gets the
// replies to those commands first. Then the MTA connection is closed.
func (e *engine) quitMTA() {
	done := make(chan struct{})
	e.enqueue(&pending{verb: proxyQuit, done: done})
	e.sw.WriteString("QUIT\r\n")
	err := e.pushServer()
	e.pushClient() // the replies ready so far, the refusal perhaps
	if err == nil {
		select {
		case <-done:
		case <-e.srvDone:
		case <-time.After(e.cfg.IdleTimeout()):
			e.log.Warningf("[%d] the MTA did not answer QUIT within timeout_idle", e.c.id)
		}
	}
	e.closeMTA()
	e.mu.Lock()
	defer e.mu.Unlock()
	// Commands the MTA left unanswered get a 421 of the proxy's own, so
	// that the client's dialogue stays in step.
	kept := e.queue[:0]
	for _, p := range e.queue {
		if p.local == nil && p.reply == nil {
			if p.verb == proxyQuit {
				if p.done != nil {
					close(p.done)
				}
				continue
			}
			p.local = e.reply(421, "4.4.2", e.cfg.MsgTransactionFailed)
		}
		kept = append(kept, p)
	}
	e.queue = kept
	e.forward = 0
	e.flushLocked()
}

// goDirect turns the session into a direct proxy: bytes pass untouched
// both ways, with timeout_direct.
func (e *engine) goDirect() {
	e.c.direct = true
	e.c.setState(stDirect)
	e.pushServer()
	e.pushClient()
	// What was read ahead on either side goes first.
	if n := e.cr.Buffered(); n > 0 {
		b, _ := e.cr.Peek(n)
		e.srv.Write(b)
	}
	if n := e.sr.Buffered(); n > 0 {
		b, _ := e.sr.Peek(n)
		e.cli.Write(b)
	}
	e.cli.SetDeadline(time.Time{})
	e.srv.SetDeadline(time.Time{})
	by := relayInto(e.cli, e.srv, e.cfg.DirectTimeout(), &e.c.cliRx, &e.c.srvRx)
	e.setBy(by)
}
