package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/smtp"
	"smtp-gated/ipc"
)

// The checks a session asks the lookup process for (DNSBL, SPF), the
// takeover session that answers a client whose destination is unknown,
// and the spoofed connection of mode tproxy.

// lookupBudget bounds a session's wait for one answer of the lookup
// process: the lookup process's own timeout (remote-udp: one per query),
// and a margin, so that its answer, which says why, normally comes first.
func lookupBudget(cfg *config.Config) time.Duration {
	t := cfg.LookupTimeout()
	if cfg.Mode == config.ModeRemoteUDP {
		t *= time.Duration(max(cfg.RemoteUdpRetries, 1))
	}
	return t + 2*time.Second
}

// askLookup calls the lookup process within lookupBudget.
func (w *worker) askLookup(c *conn, t ipc.Type, q any, want ipc.Type) (*ipc.Msg, error) {
	lp := w.lookup.Load()
	if lp == nil {
		return nil, errors.New("the lookup process is not available")
	}
	ctx, cancel := context.WithTimeout(c.ctx, lookupBudget(c.cfg))
	defer cancel()
	return lp.Call(ctx, t, q, want)
}

// dnsblListed asks whether the client is on a dnsbl zone: the first zone
// that lists it (configuration order) and the address the zone answered,
// "" when none does. A failure of the look-up itself is logged and lets
// the client through, as a zone that does not answer does.
func (w *worker) dnsblListed(c *conn) (zone, answer string) {
	m, err := w.askLookup(c, ipc.MsgDnsblQuery, &ipc.DnsblQuery{ID: c.id, Addr: c.src.Addr()}, ipc.MsgDnsblAnswer)
	if err != nil {
		w.log.Warningf("[%d] dnsbl: %v: not checked", c.id, err)
		return "", ""
	}
	a := m.Payload.(*ipc.DnsblAnswer)
	if a.Err != "" {
		w.log.Warningf("[%d] dnsbl: %s", c.id, a.Err)
	}
	if a.Zone != "" {
		w.log.Eventf(logx.Notice, "DNSBL:FOUND domain=%s.%s, answer=%s, src=%v, id=%d",
			reverseName(c.src.Addr()), a.Zone, a.Answer, c.src.Addr(), c.id)
	}
	return a.Zone, a.Answer
}

// reverseName is addr as a DNSBL zone is asked about it: the octets of
// an IPv4 address, the nibbles of an IPv6 one, in reverse order.
func reverseName(addr netip.Addr) string {
	var parts []string
	if addr.Is4() {
		b := addr.As4()
		for i := 3; i >= 0; i-- {
			parts = append(parts, strconv.Itoa(int(b[i])))
		}
	} else {
		b := addr.As16()
		for i := 15; i >= 0; i-- {
			parts = append(parts, strconv.FormatUint(uint64(b[i]&0xf), 16), strconv.FormatUint(uint64(b[i]>>4), 16))
		}
	}
	return strings.Join(parts, ".")
}

// dnsblText is the reply to a listed client, as 1.4 wrote it:
// msg_dnsdb_reject, the zone and the address it answered ("-" if none).
func dnsblText(cfg *config.Config, zone, answer string) string {
	if answer == "" {
		answer = "-"
	}
	return fmt.Sprintf("%s: DNSBL: %s: %s", cfg.MsgDnsdbReject, zone, answer)
}

// refuseLookup answers a client whose destination is unknown: a greeting
// of the proxy's own (1.4's "220 <name> SMTP"), then the takeover
// session, whose MAIL reply says why: msg_lookup_failed, and after it
// what failed (msg_lookup_timeout...), as in 1.4. c.by is set by the
// caller.
func (w *worker) refuseLookup(c *conn, why string) {
	e := newEngine(w, c, nil)
	e.clock.stop() // no relayed session: timeout_session only
	e.reason = c.cfg.MsgLookupFailed
	if why != c.cfg.MsgLookupFailed {
		e.reason += ": " + why
	}
	e.ended = true
	e.cw.Write(smtp.FormatReply(220, "", e.name, "SMTP"))
	e.takeover()
}

// mailChecks runs the checks of MAIL FROM that need the lookup process:
// DNSBL when auth_skip dnsbl delays it to here, then SPF. A refusal ends
// the relayed session as 1.4 did (refuse): it returns errTakeover then.
func (e *engine) mailChecks(addr string) error {
	cfg, c := e.cfg, e.c
	e.mu.Lock()
	authed := e.authed
	e.mu.Unlock()
	if cfg.Dnsbl != "" && cfg.AuthSkip.Has(config.AuthSkipDNSBL) && !authed {
		if !e.dnsblDone {
			e.dnsblDone = true
			c.setState(stDnsdb)
			e.dnsblZone, e.dnsblAnswer = e.p.dnsblListed(c)
			c.setState(commandState("MAIL"))
			if e.dnsblZone != "" {
				e.found(config.LockDNSBL, e.dnsblZone)
			}
		}
		if e.dnsblZone != "" {
			return e.refuse("MAIL", ipc.CloseDnsbl, 550, "5.7.1", dnsblText(cfg, e.dnsblZone, e.dnsblAnswer), cfg.MsgDnsdbReject)
		}
	}
	if cfg.Spf == config.SPFOff {
		return nil
	}
	if authed {
		// As 1.4: a client that authenticated is who it says it is,
		// wherever it sends from.
		e.log.Debugf("[%d] SPF not checked: the client authenticated", c.id)
		return nil
	}
	ip := e.spfAddr()
	if addr == "" && e.helo == "" {
		e.log.Infof("[%d] SPF none: null sender without HELO, not checked", c.id)
		return nil
	}
	c.setState(stSpf)
	a, err := e.p.spfCheck(c, &ipc.SpfQuery{ID: c.id, IP: ip, Helo: e.helo, Sender: addr})
	c.setState(commandState("MAIL"))
	if err != nil {
		e.log.Warningf("[%d] SPF: %v: not checked", c.id, err)
		return nil
	}
	// 1.4's line, then the outcome and the session's id.
	spf := fmt.Sprintf("SPF:%s ip=%v, helo=%s, from=%s", a.Result, ip, e.helo, addr)
	if a.Err != "" {
		spf += ", reason=" + a.Err
	}
	if a.Result != "fail" {
		e.log.Eventf(logx.Info, "%s, id=%d", spf, c.id)
		return nil
	}
	if cfg.SpfLogOnly {
		e.log.Eventf(logx.Notice, "%s, action=accepted (spf_log_only), id=%d", spf, c.id)
		return nil
	}
	e.log.Eventf(logx.Notice, "%s, action=refused, id=%d", spf, c.id)
	e.found(config.LockSPF, addr)
	// 1.4's reply has room for a detail, which it never filled: "-".
	return e.refuse("MAIL", ipc.CloseSpf, 550, "5.7.1", cfg.MsgSpfReject+": -", cfg.MsgSpfReject)
}

// spfAddr is the address SPF checks, per the spf option: the client's
// (incoming), the proxy's outgoing address (outgoing: outgoing_addr, or
// the source of the connection to the MTA when that is not set, which in
// mode tproxy is the client's), or spf_fixed_ip (fixed).
func (e *engine) spfAddr() netip.Addr {
	cfg := e.cfg
	switch cfg.Spf {
	case config.SPFIncoming:
		return e.c.src.Addr().Unmap()
	case config.SPFFixed:
		return cfg.SpfFixedIp.Unmap()
	}
	if a := cfg.OutgoingAddr; a.IsValid() && !a.IsUnspecified() {
		return a.Unmap()
	}
	if t, ok := e.srv.LocalAddr().(*net.TCPAddr); ok {
		return t.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// spoofConnect connects to the MTA from the client's own address and port
// (mode tproxy) on a socket master binds, within timeout_connect.
func (w *worker) spoofConnect(c *conn) (*net.TCPConn, string, error) {
	cfg := c.cfg
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	m, err := w.master.Call(ctx, ipc.MsgSpoofQuery, &ipc.SpoofQuery{ID: c.id, Client: c.src}, ipc.MsgSpoofSocket)
	if err != nil {
		return nil, cfg.MsgCannotConnect, fmt.Errorf("outgoing socket from master: %w", err)
	}
	defer m.Close()
	if a := m.Payload.(*ipc.SpoofSocket); a.Err != "" {
		return nil, cfg.MsgCannotConnect, fmt.Errorf("outgoing socket from master: %s", a.Err)
	}
	f := m.TakeFile(0)
	if f == nil {
		return nil, cfg.MsgCannotConnect, errors.New("outgoing socket from master: no descriptor")
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, cfg.MsgCannotConnect, err
	}
	dst := c.dst.Addr().Unmap()
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(c.dst.Port()), Addr: dst.As16()}
	if dst.Is4() && c.src.Addr().Unmap().Is4() {
		sa = &unix.SockaddrInet4{Port: int(c.dst.Port()), Addr: dst.As4()}
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return nil, cfg.MsgCannotConnect, err
	}
	if errors.Is(cerr, unix.EINPROGRESS) {
		f.SetWriteDeadline(config.Deadline(cfg.ConnectTimeout()))
		cerr = nil
		werr := rc.Write(func(fd uintptr) bool {
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || v != 0 {
				cerr = err
				if err == nil {
					cerr = unix.Errno(v)
				}
				return true
			}
			_, err := unix.Getpeername(int(fd))
			return !errors.Is(err, unix.ENOTCONN) // not yet: wait for writability
		})
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			return nil, cfg.MsgConnectTimeout, fmt.Errorf("connect from %v: %w", c.src, werr)
		}
		if werr != nil {
			return nil, cfg.MsgCannotConnect, werr
		}
	}
	if cerr != nil {
		return nil, cfg.MsgCannotConnect, fmt.Errorf("connect from %v: %w", c.src, cerr)
	}
	nc, err := net.FileConn(f)
	if err != nil {
		return nil, cfg.MsgCannotConnect, err
	}
	return nc.(*net.TCPConn), "", nil
}
