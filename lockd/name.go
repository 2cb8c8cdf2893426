package lockd

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// client is whom a lock or a rate-limit record is about: an address, and
// in the remote modes an ident.
type client struct {
	addr  netip.Addr
	ident string
}

// maxIdent bounds an ident (the remote helpers give at most 32 bytes).
const maxIdent = 64

// newClient makes the client of a session: the address without a zone,
// IPv4-mapped IPv6 addresses as IPv4.
func newClient(a netip.Addr, ident string) (client, error) {
	if !a.IsValid() {
		return client{}, errors.New("no client address")
	}
	if len(ident) > maxIdent {
		return client{}, fmt.Errorf("ident of %d bytes (at most %d)", len(ident), maxIdent)
	}
	return client{addr: a.Unmap().WithZone(""), ident: ident}, nil
}

// fileName is the client's file name in lock_path and ratelimit_path:
//
//	192.0.2.1              an IPv4 address
//	2001_db8__1            an IPv6 address, ':' written '_'
//	192.0.2.1-alice        an address and an ident
//	192.0.2.1-a_b          the ident as 1.4 cleaned it (fileIdent)
//
// An address never holds '-', so the first '-' starts the ident.
func (c client) fileName() string {
	name := strings.ReplaceAll(c.addr.String(), ":", "_")
	if c.ident != "" {
		name += "-" + fileIdent(c.ident)
	}
	return name
}

// String is the client as smtpgatectl shows and takes it: the address in
// its usual form, "-" and the ident as it is.
func (c client) String() string {
	if c.ident != "" {
		return c.addr.String() + "-" + c.ident
	}
	return c.addr.String()
}

// identOrDash is an ident as 1.4's LOCK: lines show it: "-" for none.
func identOrDash(ident string) string {
	if ident == "" {
		return "-"
	}
	return ident
}

// hostOnly is the client without its ident.
func (c client) hostOnly() client { return client{addr: c.addr} }

// fileIdentMax is the length of the ident in a file name: 1.4 kept 20
// bytes of an ident.
const fileIdentMax = 20

func fileIdentByteOK(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("-=+:", b) >= 0
}

// fileIdent is ident as 1.4 put it in a file name: its first 20 bytes,
// each byte other than a letter, a digit or one of "-=+:" written '_'.
// Two idents that differ only there share their files, as in 1.4, so
// that the lock files and an administrator's files of a 1.4
// installation keep their meaning.
func fileIdent(ident string) string {
	b := []byte(ident[:min(len(ident), fileIdentMax)])
	for i, c := range b {
		if !fileIdentByteOK(c) {
			b[i] = '_'
		}
	}
	return string(b)
}

// parseFileName reads a file name of lock_path or ratelimit_path back:
// the client's ident is the one of the name, as fileIdent wrote it. It
// reports false for names that are no client's (temporary files, files
// an administrator put there for other reasons).
func parseFileName(name string) (client, bool) {
	host, ident, _ := strings.Cut(name, "-")
	if strings.ContainsAny(host, ":%") {
		return client{}, false
	}
	a, err := netip.ParseAddr(strings.ReplaceAll(host, "_", ":"))
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return client{}, false
	}
	c := client{addr: a, ident: ident}
	if c.fileName() != name {
		return client{}, false // not the one spelling of it
	}
	return c, true
}

// parseClientArg reads a client as smtpgatectl gives it: an address
// ("192.0.2.1", "2001:db8::1"), optionally followed by "-" and an ident;
// the file-name spelling is accepted too.
func parseClientArg(s string) (client, error) {
	host, ident, hasIdent := strings.Cut(s, "-")
	a, err := netip.ParseAddr(host)
	if err != nil {
		a, err = netip.ParseAddr(strings.ReplaceAll(host, "_", ":"))
	}
	if err != nil || a.Zone() != "" {
		return client{}, fmt.Errorf("%q is not an IP address (ADDR is an address, optionally followed by -IDENT)", s)
	}
	if hasIdent && ident == "" {
		return client{}, fmt.Errorf("%q: empty ident after '-'", s)
	}
	if strings.ContainsFunc(ident, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return client{}, fmt.Errorf("%q: control characters in the ident", s)
	}
	return newClient(a, ident)
}
