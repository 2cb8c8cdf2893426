package session

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// errDirect ends the SMTP-aware part of a session: from here bytes pass
// untouched (after STARTTLS, or AUTH with auth_skip direct).
var errDirect = errors.New("direct")

// clientLoop reads the client's commands until the session ends. It
// returns errTakeover or errDirect when the session changes mode, nil or
// an error when it ends.
func (e *engine) clientLoop(idle time.Duration) error {
	var buf []byte // the line read, reused: what keeps a line copies it
	for {
		// A command already buffered is read without the socket: the
		// deadline, like the flushes, is for when the read may wait.
		ready := more(e.cr)
		if !ready {
			// Nothing more from the client for now: what was batched
			// goes out both ways.
			if err := e.pushServer(); err != nil {
				return err
			}
			e.pushClient()
		}
		if err := e.waitRoom(); err != nil {
			return err
		}
		if !ready {
			e.cli.SetReadDeadline(time.Now().Add(idle))
		}
		if e.isTakenOver() { // after the deadline: see rejectTakeover
			return errTakeover
		}
		var line []byte
		var tooLong bool
		var err error
		if !ready {
			// Waiting for the client, the session holds no buffer.
			buf = nil
		}
		if e.cr, err = e.crSrc.wait(e.cr); err == nil {
			line, tooLong, err = smtp.AppendLine(buf[:0], e.cr, e.maxLine())
			if cap(line) <= 1024 {
				buf = line
			}
		}
		if e.isTakenOver() {
			// The deadline does not stop a read that was under way:
			// what came is the takeover session's.
			e.giveBack(line, tooLong)
			return errTakeover
		}
		if err != nil {
			e.clientEnded(err)
			return err
		}
		if tooLong {
			e.rep.Logf(e.log, logx.Notice, "line too long", "[%d] command line over %d bytes refused", e.c.id, e.maxLine())
			e.local("", 500, "5.5.2", e.cfg.MsgProtoError)
			continue
		}
		cmd, err := smtp.ParseCommand(line)
		if err != nil {
			// Never passed on: the MTA could read it as another verb,
			// or end it elsewhere, than the proxy does.
			e.log.Noticef("[%d] command line refused: %v", e.c.id, err)
			e.local("", 500, "5.5.2", e.cfg.MsgProtoError)
			continue
		}
		if err := e.command(cmd, line); err != nil {
			return err
		}
	}
}

// giveBack puts a line read from the client back in front of what it
// sends next. A line cut at the longest length gets its end back.
func (e *engine) giveBack(line []byte, tooLong bool) {
	if len(line) == 0 {
		return
	}
	if tooLong {
		line = append(line, "\r\n"...)
	}
	e.cr = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(line), e.cr), e.cr.Size())
}

// clientEnded records why reading the client stopped.
func (e *engine) clientEnded(err error) {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		e.setBy("idle")
	default:
		e.setBy("client")
	}
}

// command handles one command line from the client.
func (e *engine) command(cmd smtp.Command, line []byte) error {
	cfg := e.cfg
	skipRegex := e.authed && cfg.AuthSkip.Has(config.AuthSkipRegex)
	e.c.setState(commandState(cmd.Verb))
	switch cmd.Verb {
	case "HELO", "EHLO":
		if cfg.LogHelo {
			e.log.Alwaysf("%s src=%v, ident=%s, helo=%s, id=%d", cmd.Verb, e.c.src.Addr(), e.c.ident, cmd.Arg, e.c.id)
		}
		// Whatever auth_skip says, as in 1.4: it exempts MAIL FROM and
		// RCPT TO only.
		if refused(cfg.RegexEnforceHeloRE, cfg.RegexRejectHeloRE, cmd.Arg) {
			e.rep.Eventf(e.log, logx.Notice, "refused by regex", "REGEX:REJECT src=%v, ident=%s, helo=%s, id=%d", e.c.src.Addr(), e.c.ident, cmd.Arg, e.c.id)
			e.foundRegex(cmd.Verb, cmd.Arg)
			return e.refuse(cmd.Verb, ipc.CloseRegex, 550, "5.7.1", cfg.MsgRegexHelo, cfg.MsgRegexHelo)
		}
		e.helo = cmd.Arg
	case "MAIL":
		addr := e.address(cmd.Arg, "FROM:")
		if e.authRequired() {
			e.c.events.Or(ipc.EventNoAuth)
			e.local(cmd.Verb, 530, "5.7.0", cfg.MsgAuthRequired)
			return nil
		}
		if !skipRegex && refused(cfg.RegexEnforceMailFromRE, cfg.RegexRejectMailFromRE, addr) {
			e.rep.Eventf(e.log, logx.Notice, "refused by regex", "REGEX:REJECT mail=%s, id=%d", addr, e.c.id)
			e.foundRegex(cmd.Verb, addr)
			return e.refuse(cmd.Verb, ipc.CloseRegex, 550, "5.7.1", cfg.MsgRegexMailFrom, cfg.MsgRegexMailFrom)
		}
		if err := e.mailChecks(addr); err != nil {
			return err
		}
		e.from = addr
	case "RCPT":
		addr := e.address(cmd.Arg, "TO:")
		if !skipRegex && refused(cfg.RegexEnforceRcptToRE, cfg.RegexRejectRcptToRE, addr) {
			e.rep.Eventf(e.log, logx.Notice, "refused by regex", "REGEX:REJECT rcpt=%s, id=%d", addr, e.c.id)
			e.foundRegex(cmd.Verb, addr)
			return e.refuse(cmd.Verb, ipc.CloseRegex, 550, "5.7.1", cfg.MsgRegexRcptTo, cfg.MsgRegexRcptTo)
		}
		if e.rateRefused("RCPT") {
			return nil
		}
	case "BDAT", "XEXCH50":
		// CHUNKING and XEXCH50 are hidden from the client: the proxy
		// could not hold back the end of a chunked message.
		e.local(cmd.Verb, 502, "5.5.2", cfg.MsgUnimplCommand)
		return nil
	case "XCLIENT":
		if cfg.Mode == config.ModeFixedXclient {
			e.local(cmd.Verb, 502, "5.5.2", cfg.MsgUnimplCommand)
			return nil
		}
	case "STARTTLS":
		if cfg.ForbidStarttls {
			e.local(cmd.Verb, 502, "5.5.2", cfg.MsgUnimplCommand)
			return nil
		}
		return e.startTLS(line)
	case "AUTH":
		if e.rateRefused("AUTH") {
			return nil
		}
		return e.auth(line)
	case "DATA":
		if e.rateRefused("DATA") {
			return nil
		}
		return e.data(line)
	}
	if !pipelined[cmd.Verb] {
		// A verb the proxy does not follow waits for its reply before
		// anything else is passed on: should the MTA take it for DATA
		// (354), nothing of a message has gone after it (see answer).
		_, err := e.exchange(cmd.Verb, cmd.Arg, line)
		return err
	}
	_, err := e.send(cmd.Verb, cmd.Arg, line, nil)
	return err
}

// pipelined are the verbs passed on without waiting for their reply
// (RFC 2920 and the extensions the proxy knows); any other command waits.
var pipelined = map[string]bool{
	"HELO": true, "EHLO": true, "MAIL": true, "RCPT": true, "RSET": true,
	"NOOP": true, "QUIT": true, "VRFY": true, "EXPN": true, "HELP": true,
	"XCLIENT": true, "XFORWARD": true, "ETRN": true,
}

// refused applies a pair of regex_enforce_* / regex_reject_* patterns.
func refused(enforce, reject *regexp.Regexp, s string) bool {
	return (enforce != nil && !enforce.MatchString(s)) || (reject != nil && reject.MatchString(s))
}

// authRequired reports whether auth_require stops a MAIL FROM now.
func (e *engine) authRequired() bool {
	if e.authed {
		return false
	}
	switch e.cfg.AuthRequire {
	case config.AuthMandatory:
		return true
	case config.AuthIfSupported:
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.ext.Auth
	}
	return false
}

// waitRoom stops reading the client while the queue is full: the
// forwarded commands at their limit and waitCap replies waiting behind
// the oldest of them. The client's socket fills and TCP slows the client
// down; nothing is refused for it. What was batched goes out first, or
// the room would never come. It returns an error when the MTA side
// ended meanwhile.
func (e *engine) waitRoom() error {
	e.mu.Lock()
	full := e.fullLocked()
	e.mu.Unlock()
	if !full {
		return nil
	}
	if err := e.pushServer(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.flushClient()
	for e.fullLocked() && !e.srvEnd {
		e.room.Wait()
	}
	if e.srvEnd {
		return net.ErrClosed
	}
	return nil
}

// fullLocked reports whether the queue has no room for the client's next
// command. Called with e.mu held.
func (e *engine) fullLocked() bool {
	waiting := len(e.queue) - e.forward // answered, waiting for their turn
	return waiting >= e.waitCap || e.forward >= e.fwdCap && e.cfg.PipelineSize == 0
}

// send forwards a command line to the MTA and queues it. When the number
// of commands awaiting the MTA reaches pipeline_size, the command is
// answered by the proxy instead, in its turn, and not forwarded: the
// client learns it must slow down and the dialogue stays in step.
func (e *engine) send(verb, arg string, line []byte, done chan struct{}) (*pending, error) {
	p := &pending{verb: verb, arg: arg, done: done}
	e.mu.Lock()
	full := e.cfg.PipelineSize > 0 && uint64(e.forward) >= e.cfg.PipelineSize
	e.mu.Unlock()
	if full {
		e.c.events.Or(ipc.EventPipeline)
		e.rep.Logf(e.log, logx.Notice, "pipeline full", "[%d] pipeline full (%d commands outstanding): %s refused", e.c.id, e.cfg.PipelineSize, verb)
		p.local = e.reply(451, "4.5.3", e.cfg.MsgPipelineFull)
		e.enqueue(p)
		return p, nil
	}
	e.enqueue(p)
	if _, err := e.sw.Write(line); err != nil {
		e.setBy("server")
		return nil, err
	}
	if done != nil {
		// The caller waits for the reply: the command must be out.
		if err := e.pushServer(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// pushServer flushes the commands batched for the MTA.
func (e *engine) pushServer() error {
	if e.sw.Buffered() == 0 {
		return nil
	}
	e.srv.SetWriteDeadline(time.Now().Add(e.cfg.IdleTimeout()))
	if err := e.sw.Flush(); err != nil {
		e.setBy("server")
		return err
	}
	return nil
}

// exchange sends one command and waits until its reply went to the
// client.
func (e *engine) exchange(verb, arg string, line []byte) (*pending, error) {
	done := make(chan struct{})
	p, err := e.send(verb, arg, line, done)
	if err != nil {
		return nil, err
	}
	// timeout_idle: silence on both sides (idle.go).
	timer := time.NewTimer(e.clock.left())
	defer timer.Stop()
	for {
		select {
		case <-done:
			return p, nil
		case <-e.srvDone:
			select {
			case <-done: // the reply that made the MTA side stop (STARTTLS)
				return p, nil
			default:
			}
			return nil, io.EOF
		case <-timer.C:
			if left := e.clock.left(); left > 0 {
				timer.Reset(left)
				continue
			}
			e.setBy("idle")
			return nil, os.ErrDeadlineExceeded
		}
	}
}

// startTLS forwards STARTTLS. If the MTA agrees, the session becomes a
// direct proxy: the proxy cannot read what follows.
func (e *engine) startTLS(line []byte) error {
	p, err := e.exchange("STARTTLS", "", line)
	if err != nil {
		return err
	}
	if p.reply != nil && p.reply.Code == 220 {
		return errDirect
	}
	return nil
}

// auth forwards AUTH and the client's answers to the MTA's challenges
// (334), which are not commands.
func (e *engine) auth(line []byte) error {
	for {
		p, err := e.exchange("AUTH", "", line)
		if err != nil {
			return err
		}
		if p.reply == nil || p.reply.Code != 334 {
			if p.reply != nil && p.reply.Code == 235 && e.cfg.AuthSkip.Has(config.AuthSkipDirect) {
				return errDirect
			}
			return nil
		}
		e.cli.SetReadDeadline(time.Now().Add(e.cfg.IdleTimeout()))
		var tooLong bool
		line, tooLong, err = smtp.ReadLine(e.cr, max(e.maxLine(), 16384))
		if err != nil {
			e.clientEnded(err)
			return err
		}
		if tooLong {
			// Cancel the exchange: "*" is the client's way to do it.
			line = []byte("*\r\n")
		}
	}
}

// foundRegex reports a command refused by a regex_* option: verb tells
// action_script which one (REGEX_HELO, REGEX_MAIL_FROM, REGEX_RCPT_TO).
func (e *engine) foundRegex(verb, detail string) {
	f := e.c.event(config.LockRegex, detail)
	f.Command = verb
	e.report(f)
}
