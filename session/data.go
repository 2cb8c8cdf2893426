package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// dataBuf is the piece in which a message is read from the client.
const dataBuf = 64 * 1024

var dataPool = sync.Pool{New: func() any { b := make([]byte, dataBuf); return &b }}

// data handles DATA: forwarded; if the MTA says 354, the message follows.
func (e *engine) data(line []byte) error {
	p, err := e.exchange("DATA", "", line)
	if err != nil {
		return err
	}
	if p.reply == nil || p.reply.Code != 354 {
		return nil
	}
	return e.message()
}

// natHeader appends to b the header the proxy adds at the top of the
// message it sends to the MTA (not to the spool), per nat_header_type.
func (e *engine) natHeader(b []byte) []byte {
	c, cfg := e.c, e.cfg
	switch cfg.NatHeaderType {
	case config.NatHeaderIPOnly:
		return fmt.Appendf(b, "%s: %s\r\n", cfg.NatHeader, c.src.Addr().Unmap())
	case config.NatHeaderGeneric:
		ident := "[ident-empty]"
		if c.ident != "" {
			ident = "[ident " + c.ident + "]"
		}
		b = fmt.Appendf(b, "%s: from [%s]:%d %s\r\n\tby %s with TPROXY id %d.%d\r\n",
			cfg.NatHeader, c.src.Addr().Unmap(), c.src.Port(), ident, e.name, c.start.Unix(), c.id)
		if cfg.Abuse != "" {
			b = fmt.Appendf(b, "\tabuse-to %s\r\n", cfg.Abuse)
		}
	}
	return b
}

// heldMax is the most of a message's end that waits with the final dot
// (heldPool): a larger last piece goes to the MTA as it comes.
const heldMax = 16 * 1024

// heldPool holds, for a message, the bytes for the MTA that wait to go
// with the next piece: the NAT header with the first piece of the
// message, the last piece with the final dot.
var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, heldMax+1024); return &b }}

// message streams the message to the MTA and to the spool file as it
// arrives, and holds back the final dot until the scanner's verdict.
func (e *engine) message() error {
	cfg := e.cfg
	e.c.setState(stData)
	idle := cfg.IdleTimeout()
	var fwdErr error
	// What goes to the MTA goes as it comes, in as few writes as that
	// allows: the NAT header with the first piece of the message, and
	// a short last piece with the final dot (release), so that a short
	// message is one write.
	hp := heldPool.Get().(*[]byte)
	defer heldPool.Put(hp) // nothing keeps held: send copies it or writes it
	held := e.natHeader((*hp)[:0])
	// The message is spooled only for a scanner that will read it, and
	// only as far as that scanner reads (spool_max_size).
	var sp *spoolFile
	if limit := e.spoolLimit(); limit > 0 {
		var err error
		if sp, err = e.w.spool.create(e.c); err != nil {
			e.log.Errf("[%d] spool: %v", e.c.id, err)
		}
		sp.max = limit
	}
	st := e.startScan(sp) // scan_stream: clamd gets the message as it comes
	defer st.abandon()    // unless scan took it at the dot
	var f smtp.DataFilter
	oversize := false
	// feed passes one piece of the client's bytes through the filter and
	// on to the MTA and the spool; it returns how much it consumed.
	feed := func(buf []byte) (int, bool) {
		fwd, spool, n, done := f.Feed(buf)
		if !oversize {
			switch {
			case done && len(held)+len(fwd) <= heldMax:
				held = append(held, fwd...) // fwd is valid until the next read
			case fwdErr == nil && len(held)+len(fwd) > 0:
				e.srv.SetWriteDeadline(time.Now().Add(idle))
				bufs := net.Buffers{held, fwd}
				_, fwdErr = bufs.WriteTo(e.srv)
				held = held[:0]
			}
			if sp.write(spool); sp != nil && (sp.dropped || sp.err != nil) {
				st.abandon() // the scanner reads this file no more
			}
			if cfg.SizeLimit > 0 && uint64(f.Size()) > cfg.SizeLimit {
				// Over the limit: the MTA is dropped now, before it can
				// see an end; the rest of the message is read and let go.
				oversize = true
				e.closeMTA()
				e.log.Noticef("[%d] message over size_limit %d: MTA connection closed", e.c.id, cfg.SizeLimit)
			}
		}
		return n, done
	}
	// First what the command reader holds, then the socket directly, in
	// pieces as large as the pool's buffers.
	done := false
	if k := e.cr.Buffered(); k > 0 {
		buf, _ := e.cr.Peek(k)
		var n int
		n, done = feed(buf)
		e.cr.Discard(n)
	}
	if !done {
		bp := dataPool.Get().(*[]byte)
		for !done {
			e.cli.SetReadDeadline(time.Now().Add(idle))
			k, err := e.in.Read(*bp)
			if k > 0 {
				var n int
				n, done = feed((*bp)[:k])
				if done && n < k {
					e.in.unread((*bp)[n:k]) // commands after the message
				}
			}
			if err != nil && !done {
				dataPool.Put(bp)
				e.clientEnded(err)
				sp.remove()
				return err
			}
		}
		dataPool.Put(bp)
	}
	size := f.Size()
	e.c.pol.size = size
	switch {
	case oversize:
		sp.remove()
		e.setBy("size")
		e.reason = cfg.MsgSizeLimit
		e.local(".", 552, "5.3.4", cfg.MsgSizeLimit)
		return errTakeover
	case fwdErr != nil:
		// The MTA went away during the message: it has no end of it, so
		// nothing was accepted. The server side ends the session.
		e.log.Warningf("[%d] sending the message to the MTA: %v", e.c.id, fwdErr)
		sp.keep(cfg.SpoolLeaveOn.Has(config.SpoolLeaveError))
		return fwdErr
	case sp != nil && sp.err != nil:
		// The file is gone already (spoolFile.write).
		e.log.Errf("[%d] spool: %v", e.c.id, sp.err)
		if cfg.IgnoreErrors {
			e.log.Warningf("[%d] message %d not scanned: passed as ignore_errors says", e.c.id, e.c.trns.Load())
			return e.release(held)
		}
		e.setBy("spool")
		e.closeMTA()
		e.reason = cfg.MsgSpoolProblem
		e.local(".", 451, "4.3.0", cfg.MsgSpoolProblem)
		return errTakeover
	}
	// The scan is bounded by timeout_scanner and timeout_spam, not by
	// timeout_idle: the session is not silent while it runs.
	defer e.clock.hold()()
	start := time.Now()
	e.c.setState(stScan)
	lg := e.log.Held() // the verdict's lines: one write
	v := e.scan(lg, sp, size, st)
	e.logVerdict(lg, v, size, time.Since(start))
	lg.Release()
	switch v.Kind {
	case ipc.VerdictClean:
		leave := cfg.SpoolLeaveOn.Has(config.SpoolLeaveAlways)
		if v.Err != "" {
			// The antispam scanner failed: it only advises.
			e.log.Warningf("[%d] message %d: %s: passed, the antispam scan only advises", e.c.id, e.c.trns.Load(), v.Err)
			leave = leave || cfg.SpoolLeaveOn.Has(config.SpoolLeaveError)
		}
		sp.keep(leave)
		return e.release(held)
	case ipc.VerdictVirus:
		sp.keep(cfg.SpoolLeaveOn.Has(config.SpoolLeaveVirus) || cfg.SpoolLeaveOn.Has(config.SpoolLeaveAlways))
		e.setBy("virus")
		name := v.Name
		if name == "" {
			name = cfg.MsgUnknownVirus
		}
		e.closeMTA()
		e.foundMessage(config.LockVirus, v, sp, size)
		e.reason = fmt.Sprintf("%s (%s)", cfg.MsgVirusFound, name)
		e.local(".", 550, "5.7.1", e.reason)
		return errTakeover
	case ipc.VerdictSpam:
		sp.keep(cfg.SpoolLeaveOn.Has(config.SpoolLeaveSpam) || cfg.SpoolLeaveOn.Has(config.SpoolLeaveAlways))
		e.c.spam++
		if cfg.LockOn.Has(config.LockSpam) {
			e.setBy("spam")
			e.closeMTA()
			e.foundMessage(config.LockSpam, v, sp, size)
			e.reason = fmt.Sprintf("%s [%f]", cfg.MsgSpamFound, v.Score)
			e.local(".", 550, "5.7.1", e.reason)
			return errTakeover
		}
		// As 1.4: spam is refused only when lock_on says so; otherwise
		// it is logged, counted, and goes on to the MTA. action_script
		// runs all the same (the manual: "when virus or spam is found").
		e.foundMessage(config.LockSpam, v, sp, size)
		e.log.Noticef("[%d] message %d is spam (score %.1f): passed, lock_on lacks spam", e.c.id, e.c.trns.Load(), v.Score)
		if v.Err == "" {
			return e.release(held)
		}
		// The spam scan ran, so the error is the virus scanner's.
	default:
		sp.keep(cfg.SpoolLeaveOn.Has(config.SpoolLeaveError) || cfg.SpoolLeaveOn.Has(config.SpoolLeaveAlways))
	}
	// The virus scanner failed.
	if cfg.IgnoreErrors {
		e.log.Warningf("[%d] scanner failed (%s): passing the message as ignore_errors says", e.c.id, v.Err)
		return e.release(held)
	}
	e.setBy("scanner")
	e.closeMTA()
	e.reason = cfg.MsgScannerFailed
	e.local(".", 451, "4.3.0", cfg.MsgScannerFailed)
	return errTakeover
}

// logVerdict writes 1.4's SCAN: and SPAM: lines of a message of size
// bytes (after dot-unstuffing) that took d to judge: the virus scan's
// outcome, then the spam scan's unless a virus was found. 1.4's fields
// come first, then the session's id and transaction.
func (e *engine) logVerdict(lg *logx.Logger, v *ipc.Verdict, size int64, d time.Duration) {
	cfg, c := e.cfg, e.c
	who := fmt.Sprintf("src=%v, ident=%s", c.src.Addr(), c.ident)
	secs := int64(d / time.Second)
	ours := fmt.Sprintf(", id=%d, trns=%d", c.id, c.trns.Load())
	// failed: the scanner name failed, or the scan never reached one.
	failed := func(name string) bool {
		return v.Kind == ipc.VerdictError && (strings.Contains(v.Err, name+":") || len(v.Scanned) == 0)
	}
	av := cfg.AntivirusType.String()
	switch {
	case v.Kind == ipc.VerdictVirus:
		lg.Eventf(logx.Notice, "SCAN:VIRUS size=%d, time=%d, %s, virus=%s%s", size, secs, who, v.Name, ours)
		return
	case cfg.AntivirusType != config.AntivirusOff && failed(av):
		lg.Eventf(logx.Err, "SCAN:FAILED size=%d, time=%d, %s, result=%s%s", size, secs, who, v.Err, ours)
	case slices.Contains(v.Scanned, av):
		lg.Eventf(logx.Info, "SCAN:CLEAN size=%d, time=%d, %s%s", size, secs, who, ours)
	default:
		lg.Eventf(logx.Info, "SCAN:SKIPPED size=%d, %s%s", size, who, ours)
	}
	spam := fmt.Sprintf("size=%d, time=%d, %s, score=%f%s", size, secs, who, v.Score, ours)
	switch {
	case cfg.AntispamType == config.AntispamOff:
		lg.Eventf(logx.Info, "SPAM:SKIPPED %s", spam)
	case failed("spamd"):
		lg.Eventf(logx.Err, "SPAM:FAILED %s", spam)
	case v.Kind == ipc.VerdictSpam:
		lg.Eventf(logx.Notice, "SPAM:FOUND %s", spam)
	case slices.Contains(v.Scanned, "spamd"):
		lg.Eventf(logx.Info, "SPAM:CLEAN %s", spam)
	case cfg.SpamMaxSize == 0:
		// spam_max_size 0 turns antispam off without a line, as in 1.4.
	default:
		lg.Eventf(logx.Info, "SPAM:SKIPPED size=%d, %s%s", size, who, ours)
	}
}

// release sends the final dot, after held, the end of the message that
// waited for it: the MTA's reply to it goes to the client.
func (e *engine) release(held []byte) error {
	if err := e.beforeDot(); err != nil {
		return err
	}
	e.c.setState(stPost)
	_, err := e.send(".", "", append(held, smtp.EndOfData...), nil)
	return err
}

// scanners reports which scanners read a message of size bytes (size < 0:
// not known yet, which any of them may read): a scanner that is
// configured, not spared the client by auth_skip, and whose size limit
// (scan_max_size, spam_max_size; 0 turns it off) the message is within.
func (e *engine) scanners(size int64) (av, as bool) {
	cfg := e.cfg
	e.mu.Lock()
	authed := e.authed
	e.mu.Unlock()
	within := func(limit uint64) bool { return limit > 0 && (size < 0 || uint64(size) <= limit) }
	av = cfg.AntivirusType != config.AntivirusOff && within(cfg.ScanMaxSize) &&
		!(authed && cfg.AuthSkip.Has(config.AuthSkipAntivir))
	as = cfg.AntispamType != config.AntispamOff && within(cfg.SpamMaxSize) &&
		!(authed && cfg.AuthSkip.Has(config.AuthSkipAntispam))
	return av, as
}

// spoolLimit is spool_max_size for the message about to come: the most
// any scanner that will read it reads, 0 when none will (nothing is
// spooled then).
func (e *engine) spoolLimit() int64 {
	var limit uint64
	av, as := e.scanners(-1)
	if av {
		limit = e.cfg.ScanMaxSize
	}
	if as {
		limit = max(limit, e.cfg.SpamMaxSize)
	}
	return int64(min(limit, 1<<62))
}

// scan asks the scanner process for a verdict on the spooled message;
// st is the message's stream to clamd, if it was streamed (scanstream.go).
// Only the virus scan can fail the message: when it is not run, a
// failure to scan for spam is the clean verdict with Err set (advisory).
func (e *engine) scan(lg *logx.Logger, sp *spoolFile, size int64, st *scanStream) *ipc.Verdict {
	av, as := e.scanners(size)
	if !av && !as {
		lg.Infof("[%d] message %d: %d bytes, not scanned: no scanner reads it (types, sizes, auth_skip)", e.c.id, e.c.trns.Load(), size)
		return &ipc.Verdict{Kind: ipc.VerdictClean}
	}
	v := e.askScanner(sp, size, st)
	if !av && v.Err != "" {
		// Whatever failed, it was not a virus scan.
		switch v.Kind {
		case ipc.VerdictError:
			v.Kind = ipc.VerdictClean
		case ipc.VerdictSpam:
			lg.Warningf("[%d] message %d: %s", e.c.id, e.c.trns.Load(), v.Err)
			v.Err = ""
		}
	}
	return v
}

// askScanner sends the spool file to the scanner process and waits for
// its verdict; what goes wrong on the way is a verdict of error.
func (e *engine) askScanner(sp *spoolFile, size int64, st *scanStream) *ipc.Verdict {
	cfg := e.cfg
	var skip []string
	if e.authed && cfg.AuthSkip.Has(config.AuthSkipAntivir) {
		skip = append(skip, "antivir")
	}
	if e.authed && cfg.AuthSkip.Has(config.AuthSkipAntispam) {
		skip = append(skip, "antispam")
	}
	fail := func(err error) *ipc.Verdict { return &ipc.Verdict{Kind: ipc.VerdictError, Err: err.Error()} }
	link := e.p.scanLink()
	if link == nil {
		return fail(errors.New("the scanner process is not available"))
	}
	f, err := sp.readOnly()
	if err != nil {
		return fail(err)
	}
	wait := cfg.ScannerTimeout() + cfg.SpamTimeout() + 5*time.Second
	ctx, cancel := context.WithTimeout(e.c.ctx, wait)
	defer cancel()
	req := &ipc.Scan{SessionID: e.c.id, Transaction: int(e.c.trns.Load()), Size: size, Client: e.c.src, Skip: skip}
	var v *ipc.Verdict
	var cerr error
	rc, err := f.SyscallConn()
	if err != nil {
		return fail(err)
	}
	typ := st.finish(link) // MsgScanFinish when the scanner has a stream
	if err := rc.Control(func(fd uintptr) { v, cerr = link.scan(ctx, typ, req, int(fd)) }); err != nil {
		return fail(err)
	}
	if cerr != nil {
		return fail(fmt.Errorf("scanner process: %w", cerr))
	}
	return v
}
