package session

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// conn is one client connection and what is known about it.
type conn struct {
	id     uint64
	cfg    *config.Config
	client *net.TCPConn
	src    netip.AddrPort
	local  netip.AddrPort
	dst    netip.AddrPort
	ident  string
	start  time.Time

	by     ipc.CloseCause
	direct bool
	rcpts  int
	spam   int    // messages the scanner found spam, refused or passed
	pol    policy // locks, rate limits, max_per_ident (policy.go)

	live // state, counters, target: read by the status query (status.go)
}

// serve runs one session from hand-off to close, and always ends with one
// CLOSE line and a SessionEnd to master. The SMTP dialogue with the MTA
// runs on a goroutine of its own: the look-ups, the calls to the other
// processes and the dial before it grow a goroutine's stack to sizes the
// dialogue does not need, and an idle session keeps its goroutine's
// stack (Go shrinks a stack only when a quarter of it is in use).
func (w *worker) serve(c *conn, f *os.File) {
	server, end := w.open(c, f)
	if server == nil {
		end()
		return
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer end()
		newEngine(w, c, server).run()
	}()
}

// open makes a session ready for its dialogue with the MTA: it returns
// the connection to the MTA, or nil when the session ended before. end
// closes what open opened and says the session ended.
func (w *worker) open(c *conn, f *os.File) (server *net.TCPConn, end func()) {
	end = func() { w.finish(c) }
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		w.log.Errf("[%d] client socket from master: %v", c.id, err)
		return nil, end
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		w.log.Errf("[%d] client socket from master is %T, not TCP", c.id, nc)
		return nil, end
	}
	c.client = tc
	// A kill closes the client socket: whatever reads it returns.
	stopCli := context.AfterFunc(c.ctx, func() { tc.Close() })
	end = func() {
		stopCli()
		tc.Close()
		w.finish(c)
	}

	c.setState(stIdent)

	// The DNSBL zones are asked while the destination is looked up
	// (unless auth_skip dnsbl delays the check to MAIL FROM).
	var listed chan [2]string
	if c.cfg.Dnsbl != "" && !c.cfg.AuthSkip.Has(config.AuthSkipDNSBL) {
		listed = make(chan [2]string, 1)
		go func() {
			zone, answer := w.dnsblListed(c)
			listed <- [2]string{zone, answer}
		}()
	}
	msg, by := w.destination(c)
	var zone, answer string
	if listed != nil {
		l := <-listed
		zone, answer = l[0], l[1]
	}
	switch {
	case by == "loop":
		c.by = by
		c.reply(554, msg) // an early reject, as for the other limits
		smtp.HangUp(c.client)
		return nil, end
	case by != "":
		// The documented answer to a failed look-up: a greeting, then
		// the takeover session, whose MAIL reply says why.
		c.by = by
		w.refuseLookup(c, msg)
		return nil, end
	}
	if !w.admitSession(c) {
		return nil, end
	}
	if zone != "" {
		// After the lock check: a client locked for an earlier listing
		// is told it is locked.
		c.by = "dnsbl"
		w.found(c, config.LockDNSBL, zone)
		c.reply(554, dnsblText(c.cfg, zone, answer))
		smtp.HangUp(c.client)
		return nil, end
	}
	c.setState(stConnect)
	server, msg, err = w.connect(c)
	if err != nil {
		c.by = "connect"
		w.log.Warningf("[%d] cannot connect to %v: %v", c.id, c.dst, err)
		c.reply(421, msg)
		return nil, end
	}
	stopSrv := context.AfterFunc(c.ctx, func() { server.Close() })
	closeCli := end
	end = func() {
		stopSrv()
		server.Close()
		closeCli()
	}
	c.setState(stPre)
	w.log.Debugf("[%d] connected to %v", c.id, c.dst)
	return server, end
}

// finish logs the CLOSE line and tells master.
func (w *worker) finish(c *conn) {
	w.policyEnd(c)
	w.forget(c)
	if c.killed.Load() {
		c.by = "killed"
	}
	cl := logx.Close{Direct: c.direct, By: string(c.by), ClientRx: c.cliRx.Load(), ServerRx: c.srvRx.Load(),
		Trns: int64(c.trns.Load()), Rcpts: int64(c.rcpts), Auth: int64(c.authFlag.Load()),
		Secs: int64(time.Since(c.start) / time.Second), Src: c.src, Ident: c.ident, ID: c.id}
	w.log.Alwaysf("%s", cl.Line())
	trns := int(c.trns.Load())
	end := &ipc.SessionEnd{ID: c.id, By: c.by, ClientRx: c.cliRx.Load(), ServerRx: c.srvRx.Load(),
		Direct: c.direct, Empty: trns == 0, Transacts: trns, Spam: c.spam, Auth: int(c.authFlag.Load()), Events: c.events.Load()}
	if err := w.master.Send(ipc.MsgSessionEnd, end); err != nil {
		w.log.Errf("[%d] telling master the session ended: %v", c.id, err)
	}
}

// reply writes one reply of the proxy's own to the client, bounded in time.
func (c *conn) reply(code int, text string) {
	c.client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.client.Write(smtp.FormatReply(code, "", c.cfg.ProxyHostName(), text))
}

// destination decides where the session goes. On failure it returns the
// text for the client and the CLOSE cause.
func (w *worker) destination(c *conn) (msg string, by ipc.CloseCause) {
	cfg := c.cfg
	if cfg.Mode.Fixed() {
		c.setDestination(netip.AddrPortFrom(cfg.FixedServer, cfg.FixedServerPort), "")
		return "", ""
	}
	lp := w.lookup.Load()
	if lp == nil {
		w.log.Errf("[%d] look-up: the lookup process is not available", c.id)
		return cfg.MsgLookupFailed, "lookup"
	}
	if cfg.Mode.Remote() && !c.src.Addr().Unmap().Is4() {
		w.log.Errf("[%d] look-up: mode %v asks IPv4 helpers: client %v is IPv6", c.id, cfg.Mode, c.src)
		return cfg.MsgMalformedIp, "lookup"
	}
	rc, err := c.client.SyscallConn()
	if err != nil {
		return cfg.MsgLookupFailed, "lookup"
	}
	var dup int
	var derr error
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || derr != nil {
		w.log.Errf("[%d] look-up: dup: %v%v", c.id, err, derr)
		return cfg.MsgLookupFailed, "lookup"
	}
	defer unix.Close(dup)
	timeout := lookupBudget(cfg)
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	m, err := lp.Call(ctx, ipc.MsgDstQuery, &ipc.DstQuery{Client: c.src, Local: c.local}, ipc.MsgDstAnswer, dup)
	if errors.Is(err, context.DeadlineExceeded) {
		w.log.Warningf("[%d] look-up timed out after %v", c.id, timeout)
		return cfg.MsgLookupTimeout, "lookup"
	}
	if err != nil {
		w.log.Errf("[%d] look-up: %v", c.id, err)
		return cfg.MsgLookupFailed, "lookup"
	}
	a := m.Payload.(*ipc.DstAnswer)
	switch a.Fail {
	case "":
		c.setDestination(a.Dst, a.Ident)
		return "", ""
	case ipc.LookupLoop:
		w.log.Warningf("[%d] avoiding loop: %v: %s", c.id, a.Dst, a.Err)
		return cfg.MsgLoopAvoidance, "loop"
	case ipc.LookupNotFound:
		w.log.Warningf("[%d] look-up: %s", c.id, a.Err)
		return cfg.MsgLookupNotfound, "lookup"
	case ipc.LookupTimeout:
		w.log.Warningf("[%d] look-up: %s", c.id, a.Err)
		return cfg.MsgLookupTimeout, "lookup"
	case ipc.LookupMismatch:
		w.log.Warningf("[%d] look-up: %s", c.id, a.Err)
		return cfg.MsgLookupMismatch, "lookup"
	case ipc.LookupMalformed:
		w.log.Warningf("[%d] look-up: %s", c.id, a.Err)
		return cfg.MsgMalformedIp, "lookup"
	}
	w.log.Warningf("[%d] look-up: %s", c.id, a.Err)
	return cfg.MsgLookupFailed, "lookup"
}

// connect opens the connection to the MTA from outgoing_addr within
// timeout_connect. On failure it also returns the text for the client.
func (w *worker) connect(c *conn) (*net.TCPConn, string, error) {
	cfg := c.cfg
	if cfg.Spoofs(c.src.Addr()) {
		return w.spoofConnect(c)
	}
	d := net.Dialer{Timeout: cfg.ConnectTimeout()}
	if out := cfg.OutgoingAddr; out.IsValid() && !out.IsUnspecified() && out.Unmap().Is4() == c.dst.Addr().Unmap().Is4() {
		d.LocalAddr = &net.TCPAddr{IP: out.AsSlice()}
	}
	nc, err := d.DialContext(c.ctx, "tcp", c.dst.String())
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, cfg.MsgConnectTimeout, err
		}
		return nil, cfg.MsgCannotConnect, err
	}
	return nc.(*net.TCPConn), "", nil
}
