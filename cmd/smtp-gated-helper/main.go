// Command smtp-gated-helper is the proxy-helper of smtp-gated's mode
// remote-udp: it runs on a Linux router that NATs its clients' SMTP
// connections to an smtp-gated on another host, and answers the proxy's
// question "where was this connection going, and from whom?" from the
// kernel's connection tracking. See smtp-gated-helper(8).
//
// Connection tracking is read from /proc/net/nf_conntrack (the procfs
// interface of nf_conntrack, CONFIG_NF_CONNTRACK_PROCFS): plain text, one
// line per connection, the original tuple then the reply tuple. The file
// is opened once, as root, and read again from its start for every
// query, so that the helper can give up root (-u) after start-up.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"smtp-gated/internal/priv"
	"smtp-gated/internal/rphd"
)

func main() {
	listen := flag.String("l", ":114", "`address`:port to answer on (UDP)")
	secretStr := flag.String("s", "0", "the `secret` shared with smtp-gated (remote_udp_secret; decimal, 0x hex or 0 octal)")
	ctPath := flag.String("c", "/proc/net/nf_conntrack", "connection tracking `file`")
	userName := flag.String("u", "", "after start-up, run as `user` (and its group)")
	verbose := flag.Bool("v", false, "log every query")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: smtp-gated-helper [-v] [-l addr:port] [-s secret] [-c file] [-u user]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	log.SetFlags(0)
	log.SetPrefix("smtp-gated-helper: ")
	secret, err := parseSecret(*secretStr)
	if err != nil {
		log.Fatalf("-s %s: %v", *secretStr, err)
	}
	ct, err := os.Open(*ctPath)
	if err != nil {
		log.Fatalf("connection tracking: %v (is nf_conntrack loaded, with its procfs interface?)", err)
	}
	pc, err := net.ListenPacket("udp4", *listen)
	if err != nil {
		log.Fatalf("%v", err)
	}
	if *userName != "" {
		id, err := priv.Resolve(*userName, "")
		if err != nil {
			log.Fatalf("-u: %v", err)
		}
		if err := priv.Drop(id, ""); err != nil && !errors.Is(err, priv.ErrNotRoot) {
			log.Fatalf("-u: %v", err)
		}
	}
	h := &helper{secret: secret, ct: ct, verbose: *verbose}
	log.Printf("answering on %v", pc.LocalAddr())
	h.serve(pc)
}

// parseSecret reads a secret as smtp-gated's INT does: decimal, 0x hex
// or leading-0 octal, 32 bits (a negative number is its two's complement).
func parseSecret(s string) (uint32, error) {
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil || v < -(1<<31) || v >= 1<<32 {
		return 0, fmt.Errorf("not a 32-bit number")
	}
	return uint32(v), nil
}

type helper struct {
	secret  uint32
	verbose bool
	mu      sync.Mutex // ct is read from its start by one query at a time
	ct      io.ReadSeeker
}

func (h *helper) serve(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			log.Fatalf("read: %v", err)
		}
		reply, why := h.answer(buf[:n])
		if h.verbose || reply == nil {
			log.Printf("query from %v: %s", from, why)
		}
		if reply == nil {
			continue
		}
		if _, err := pc.WriteTo(reply, from); err != nil {
			log.Printf("reply to %v: %v", from, err)
		}
	}
}

// answer returns the reply to one datagram, nil to ignore it, and what
// happened, for the log. Queries with a wrong secret are not answered: a
// helper tells nobody else about its clients.
func (h *helper) answer(b []byte) ([]byte, string) {
	q, err := rphd.Unmarshal(b)
	if err != nil {
		return nil, "ignored: " + err.Error()
	}
	switch {
	case q.Magic != rphd.Magic:
		return nil, fmt.Sprintf("ignored: magic %#x", q.Magic)
	case q.Flags&rphd.FlagQuery == 0 || q.Flags&rphd.FlagReply != 0:
		return nil, fmt.Sprintf("ignored: flags %#x are not a query", q.Flags)
	case q.Secret != h.secret:
		return nil, "ignored: wrong secret"
	}
	r := *q
	r.Flags = rphd.FlagReply
	if q.Version != rphd.Version {
		return r.Marshal(), fmt.Sprintf("version %#x, not %#x: answered as is", q.Version, rphd.Version)
	}
	// The proxy sees the connection from the router's NAT address
	// (q.Src:SrcPort) to itself (q.Dst:DstPort): that is the reply
	// tuple of the router's connection, whose original tuple names the
	// client and where it was going.
	proxy := netip.AddrPortFrom(netip.AddrFrom4(q.Dst), q.DstPort)
	nat := netip.AddrPortFrom(netip.AddrFrom4(q.Src), q.SrcPort)
	h.mu.Lock()
	e, err := h.find(proxy, nat)
	h.mu.Unlock()
	switch {
	case err != nil:
		r.Flags |= rphd.FlagNotFound
		return r.Marshal(), fmt.Sprintf("%v -> %v: %v", nat, proxy, err)
	case e == nil:
		r.Flags |= rphd.FlagNotFound
		return r.Marshal(), fmt.Sprintf("%v -> %v: no such connection", nat, proxy)
	}
	r.Flags |= rphd.FlagFound
	r.Src, r.SrcPort = e.origSrc.Addr().As4(), e.origSrc.Port()
	r.Dst, r.DstPort = e.origDst.Addr().As4(), e.origDst.Port()
	r.SetIdent(e.origSrc.Addr().String())
	return r.Marshal(), fmt.Sprintf("%v -> %v: client %v, destination %v", nat, proxy, e.origSrc, e.origDst)
}

// entry is one TCP connection of the tracking table.
type entry struct {
	origSrc, origDst   netip.AddrPort
	replySrc, replyDst netip.AddrPort
}

// find reads the table from its start for the IPv4 TCP connection whose
// reply goes from proxy to nat.
func (h *helper) find(proxy, nat netip.AddrPort) (*entry, error) {
	if _, err := h.ct.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(h.ct)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		e, ok := parseConntrack(sc.Text())
		if ok && e.replySrc == proxy && e.replyDst == nat {
			return e, nil
		}
	}
	return nil, sc.Err()
}

// parseConntrack reads one line of /proc/net/nf_conntrack, e.g.
//
//	ipv4     2 tcp      6 431999 ESTABLISHED src=10.9.0.2 dst=198.51.100.2 sport=40000 dport=25 src=192.0.2.2 dst=192.0.2.1 sport=9199 dport=40000 [ASSURED] mark=0 zone=0 use=2
//
// and keeps IPv4 TCP connections only.
func parseConntrack(line string) (*entry, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || f[0] != "ipv4" || f[2] != "tcp" {
		return nil, false
	}
	var addrs [2][2]netip.Addr // [tuple][src, dst]
	var ports [2][2]uint16
	var seen [2]int // fields seen per tuple
	tuple := 0
	for _, kv := range f[3:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		idx := -1
		switch k {
		case "src", "dst":
			a, err := netip.ParseAddr(v)
			if err != nil {
				return nil, false
			}
			idx = 0
			if k == "dst" {
				idx = 1
			}
			if addrs[tuple][idx].IsValid() {
				tuple++
				if tuple > 1 {
					return nil, false
				}
			}
			addrs[tuple][idx] = a
		case "sport", "dport":
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return nil, false
			}
			idx = 0
			if k == "dport" {
				idx = 1
			}
			ports[tuple][idx] = uint16(p)
		default:
			continue
		}
		seen[tuple]++
	}
	if seen[0] != 4 || seen[1] != 4 {
		return nil, false
	}
	return &entry{
		origSrc:  netip.AddrPortFrom(addrs[0][0], ports[0][0]),
		origDst:  netip.AddrPortFrom(addrs[0][1], ports[0][1]),
		replySrc: netip.AddrPortFrom(addrs[1][0], ports[1][0]),
		replyDst: netip.AddrPortFrom(addrs[1][1], ports[1][1]),
	}, true
}
