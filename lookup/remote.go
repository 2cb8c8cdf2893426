package lookup

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"smtp-gated/internal/rphd"
	"smtp-gated/ipc"
)

// The remote modes: the proxy runs on a host of its own, and a helper on
// the router that NATed the client says where the client was going. The
// helper is reached at the client's source address (the router, as the
// proxy sees it), port remote_port, from the proxy's local address.

// lookupError is a failed look-up of a given kind (ipc.Lookup*).
type lookupError struct {
	kind string
	err  error
}

func (e *lookupError) Error() string { return e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

func failKind(kind string, format string, a ...any) error {
	return &lookupError{kind: kind, err: fmt.Errorf(format, a...)}
}

// remoteUDP asks the proxy-helper: up to retries queries, each waiting
// timeout. A reply with a wrong magic, cookie or secret is dropped and
// uses up its query. All queries unanswered is a timeout; garbled answers
// only, a mismatch.
func remoteUDP(client, local netip.AddrPort, port uint16, secret uint32, retries int, timeout time.Duration) (netip.AddrPort, string, error) {
	c, l := client.Addr().Unmap(), local.Addr().Unmap()
	if !c.Is4() || !l.Is4() {
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote-udp: the proxy-helper protocol is IPv4 only (client %v)", client)
	}
	var cb [4]byte
	if _, err := rand.Read(cb[:]); err != nil {
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote-udp: cookie: %v", err)
	}
	q := &rphd.Datagram{Magic: rphd.Magic, Cookie: binary.BigEndian.Uint32(cb[:]), Secret: secret,
		Version: rphd.Version, Flags: rphd.FlagQuery, Src: c.As4(), Dst: l.As4(),
		SrcPort: client.Port(), DstPort: local.Port()}
	helper := netip.AddrPortFrom(c, port)
	conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l, 0)), net.UDPAddrFromAddrPort(helper))
	if err != nil {
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote-udp: %v", err)
	}
	defer conn.Close()
	retries = max(retries, 1)
	var garbled, refused []string
	buf := make([]byte, 512)
	for try := 1; try <= retries; try++ {
		if _, err := conn.Write(q.Marshal()); err != nil {
			refused = append(refused, err.Error())
			continue
		}
		conn.SetReadDeadline(time.Now().Add(timeout))
		n, err := conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// ICMP port unreachable from an earlier query, typically.
			refused = append(refused, err.Error())
			continue
		}
		r, err := rphd.Unmarshal(buf[:n])
		switch {
		case err != nil:
			garbled = append(garbled, err.Error())
			continue
		case r.Magic != rphd.Magic:
			garbled = append(garbled, fmt.Sprintf("magic %#x", r.Magic))
			continue
		case r.Cookie != q.Cookie:
			garbled = append(garbled, fmt.Sprintf("cookie %#x, sent %#x", r.Cookie, q.Cookie))
			continue
		case r.Secret != q.Secret:
			garbled = append(garbled, "wrong secret")
			continue
		}
		switch {
		case r.Version != rphd.Version:
			return netip.AddrPort{}, "", failKind(ipc.LookupMismatch, "remote-udp: helper %v speaks version %#x, want %#x", helper, r.Version, rphd.Version)
		case r.Flags&rphd.FlagReply == 0:
			return netip.AddrPort{}, "", failKind(ipc.LookupMismatch, "remote-udp: helper %v sent flags %#x without REPLY", helper, r.Flags)
		case r.Flags&rphd.FlagNotFound != 0:
			return netip.AddrPort{}, "", failKind(ipc.LookupNotFound, "remote-udp: helper %v has no record of %v -> %v", helper, client, local)
		case r.Flags&rphd.FlagFound == 0:
			return netip.AddrPort{}, "", failKind(ipc.LookupMismatch, "remote-udp: helper %v sent flags %#x, neither FOUND nor NOTFOUND", helper, r.Flags)
		}
		dst := netip.AddrPortFrom(netip.AddrFrom4(r.Dst), r.DstPort)
		// Loopback and unspecified pass here, to be refused as loops
		// (remoteLoop).
		if !dst.Addr().IsGlobalUnicast() && !dst.Addr().IsLoopback() && !dst.Addr().IsUnspecified() || dst.Port() == 0 {
			return netip.AddrPort{}, "", failKind(ipc.LookupMalformed, "remote-udp: helper %v answered destination %v", helper, dst)
		}
		return dst, cleanIdent(r.IdentString()), nil
	}
	switch {
	case len(garbled) > 0:
		return netip.AddrPort{}, "", failKind(ipc.LookupMismatch, "remote-udp: %d queries to %v, no valid answer (%s)", retries, helper, strings.Join(garbled, "; "))
	case len(refused) == retries:
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote-udp: helper %v: %s", helper, refused[len(refused)-1])
	}
	return netip.AddrPort{}, "", failKind(ipc.LookupTimeout, "remote-udp: %d queries to %v unanswered after %v each", retries, helper, timeout)
}

// remoteTCP is the remote (ident-like) look-up: connect to the helper,
// send "<client port> , <listen port>", read its one answer line
// "<client port> , <listen port> : ORIGIN : <ip> : <port> : <ident>".
func remoteTCP(client, local netip.AddrPort, port uint16, timeout time.Duration) (netip.AddrPort, string, error) {
	helper := netip.AddrPortFrom(client.Addr().Unmap(), port)
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local.Addr().Unmap(), 0))}
	conn, err := d.Dial("tcp", helper.String())
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return netip.AddrPort{}, "", failKind(ipc.LookupTimeout, "remote: connecting to %v: %v", helper, err)
		}
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote: connecting to %v: %v", helper, err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "%d , %d\r\n", client.Port(), local.Port()); err != nil {
		return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote: writing to %v: %v", helper, err)
	}
	b, err := io.ReadAll(io.LimitReader(conn, 1023))
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return netip.AddrPort{}, "", failKind(ipc.LookupTimeout, "remote: no complete answer from %v within %v", helper, timeout)
		}
		if !errors.Is(err, syscall.ECONNRESET) || len(b) == 0 {
			return netip.AddrPort{}, "", failKind(ipc.LookupFailed, "remote: reading from %v: %v", helper, err)
		}
	}
	return parseRemote(string(b), client.Port(), local.Port())
}

// parseRemote reads the answer of the remote helper.
func parseRemote(s string, cport, lport uint16) (netip.AddrPort, string, error) {
	line, _, _ := strings.Cut(s, "\n")
	line = strings.TrimRight(line, "\r")
	f := strings.SplitN(line, ":", 5)
	bad := func(why string) (netip.AddrPort, string, error) {
		return netip.AddrPort{}, "", failKind(ipc.LookupMismatch, "remote: answer %q: %s", line, why)
	}
	if len(f) < 2 {
		return bad("not <ports> : <type> : ...")
	}
	rp, lp, ok := strings.Cut(f[0], ",")
	if !ok {
		return bad("no port pair")
	}
	r, err1 := strconv.ParseUint(strings.TrimSpace(rp), 10, 16)
	l, err2 := strconv.ParseUint(strings.TrimSpace(lp), 10, 16)
	if err1 != nil || err2 != nil || uint16(r) != cport || uint16(l) != lport {
		return bad(fmt.Sprintf("ports are not %d , %d", cport, lport))
	}
	switch typ := strings.TrimSpace(f[1]); {
	case strings.EqualFold(typ, "ERROR"):
		return netip.AddrPort{}, "", failKind(ipc.LookupNotFound, "remote: helper answered %q", line)
	case !strings.EqualFold(typ, "ORIGIN"):
		return bad("type is not ORIGIN")
	}
	if len(f) != 5 {
		return bad("want 5 fields")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(f[2]))
	if err != nil || !a.Is4() || !a.IsGlobalUnicast() && !a.IsLoopback() {
		return netip.AddrPort{}, "", failKind(ipc.LookupMalformed, "remote: answer %q: malformed address %q", line, strings.TrimSpace(f[2]))
	}
	p, err := strconv.ParseUint(strings.TrimSpace(f[3]), 10, 16)
	if err != nil || p == 0 {
		return bad("malformed port")
	}
	ident := strings.TrimSpace(f[4])
	if len(ident) > 20 {
		ident = ident[:20]
	}
	return netip.AddrPortFrom(a, uint16(p)), cleanIdent(ident), nil
}

// cleanIdent keeps an ident from a helper safe for where it goes: log
// lines, the X-Nat header, lock and rate-limit file names. Anything but
// letters, digits and ._-+=@ becomes '_'.
func cleanIdent(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' && i > 0, c == '_', c == '-', c == '+', c == '=', c == '@':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}
