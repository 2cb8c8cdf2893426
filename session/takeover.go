package session

import (
	"errors"
	"io"
	"net"
	"time"

	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
)

// takeover is the "fake MTA" session: the MTA connection is gone, and the
// proxy answers the client itself, refusing any new mail, until QUIT,
// on_takeover_cmds commands, or timeout_session of silence.
func (e *engine) takeover() {
	cfg := e.cfg
	say := func(code int, enhanced, text string) {
		e.mu.Lock()
		e.cw.Write(e.reply(code, enhanced, text))
		e.flushClient()
		e.mu.Unlock()
	}
	e.c.setState(stTakeover)
	e.mu.Lock()
	reason := e.reason
	if reason == "" {
		reason = string(e.c.by)
	}
	e.mu.Unlock()
	e.log.Eventf(logx.Notice, "SESSION TAKEOVER: src=%v, ident=%s, trns=%d, reason=%s, id=%d",
		e.c.src.Addr(), e.c.ident, e.c.trns.Load(), reason, e.c.id)
	e.pushClient() // the reply that started the takeover
	// Why no mail can be sent: a virus, or the reason the session
	// started as a takeover (a failed destination look-up).
	noMore := cfg.MsgVirusNoMore
	if e.reason != "" {
		noMore = e.reason
	}
	timeout := time.Duration(cfg.TimeoutSession) * time.Second
	for n := 1; ; n++ {
		e.cli.SetReadDeadline(time.Now().Add(timeout))
		line, tooLong, err := smtp.ReadLine(e.cr, e.maxLine())
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				say(421, "4.4.2", cfg.MsgSessionTimeout)
			}
			return
		}
		if uint64(n) > cfg.OnTakeoverCmds {
			say(554, "5.5.0", cfg.MsgTransactionFailed)
			return
		}
		if tooLong {
			say(500, "5.5.2", cfg.MsgProtoError)
			continue
		}
		cmd, err := smtp.ParseCommand(line)
		if err != nil {
			e.log.Noticef("[%d] command line refused: %v", e.c.id, err)
			say(500, "5.5.2", cfg.MsgProtoError)
			continue
		}
		switch cmd.Verb {
		case "QUIT":
			say(221, "", cfg.MsgSignOff)
			return
		case "NOOP", "RSET":
			say(250, "2.0.0", noMore)
		case "HELO", "EHLO":
			say(250, "", cfg.MsgHello)
		case "MAIL":
			say(451, "4.3.2", noMore)
		case "RCPT", "DATA":
			say(503, "5.5.1", cfg.MsgProtoError)
		default:
			say(502, "5.5.2", cfg.MsgUnimplCommand)
		}
	}
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
	by := relayInto(e.cli, e.srv, time.Duration(e.cfg.TimeoutDirect)*time.Second, &e.c.cliRx, &e.c.srvRx)
	e.setBy(by)
}

// hangUp ends a session the proxy refuses: it sends FIN after its last
// reply and reads what the client still sends, so that closing the socket
// with unread data does not reset the connection and lose the reply.
func hangUp(c *net.TCPConn) {
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 64*1024))
}
