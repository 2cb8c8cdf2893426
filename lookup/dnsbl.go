package lookup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"smtp-gated/ipc"
)

// dnsblName is the name to ask zone about a: the address's octets (IPv4)
// or nibbles (IPv6) in reverse order, then the zone.
func dnsblName(a netip.Addr, zone string) string {
	a = a.Unmap()
	var b strings.Builder
	if a.Is4() {
		v := a.As4()
		fmt.Fprintf(&b, "%d.%d.%d.%d.", v[3], v[2], v[1], v[0])
	} else {
		v := a.As16()
		const hex = "0123456789abcdef"
		for i := 15; i >= 0; i-- {
			b.WriteByte(hex[v[i]&0xf])
			b.WriteByte('.')
			b.WriteByte(hex[v[i]>>4])
			b.WriteByte('.')
		}
	}
	b.WriteString(strings.TrimSuffix(zone, "."))
	b.WriteByte('.')
	return b.String()
}

// zoneResult is what one zone said.
type zoneResult struct {
	listed bool
	answer string // the A record of a listing
	err    error  // why the zone gave no usable answer (NXDOMAIN is none)
}

// errRefused marks answers in 127.255.255.0/24: Spamhaus and others answer
// so when they refuse the query (public resolver, over quota): an error,
// not a listing.
var errRefused = errors.New("the zone refused the query")

// askZone asks one zone about a, trying the servers in turn until one
// answers, within ctx.
func askZone(ctx context.Context, servers []string, a netip.Addr, zone string) zoneResult {
	if len(servers) == 0 {
		return zoneResult{err: errors.New("no name server")}
	}
	q := new(dns.Msg)
	q.SetQuestion(dnsblName(a, zone), dns.TypeA)
	var last error
	for _, srv := range servers {
		r, err := exchange(ctx, q, srv)
		if err != nil {
			last = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		switch r.Rcode {
		case dns.RcodeNameError:
			return zoneResult{}
		case dns.RcodeSuccess:
		default:
			last = fmt.Errorf("%s from %s", dns.RcodeToString[r.Rcode], srv)
			continue
		}
		for _, rr := range r.Answer {
			ar, ok := rr.(*dns.A)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(ar.A.To4())
			switch {
			case netip.MustParsePrefix("127.255.255.0/24").Contains(ip):
				return zoneResult{err: fmt.Errorf("%w (%v)", errRefused, ip)}
			case !netip.MustParsePrefix("127.0.0.0/8").Contains(ip):
				return zoneResult{err: fmt.Errorf("answer %v is not in 127.0.0.0/8", ip)}
			}
			return zoneResult{listed: true, answer: ip.String()}
		}
		return zoneResult{} // NOERROR without an A record
	}
	return zoneResult{err: last}
}

// exchange sends q to srv over UDP, and again over TCP when the answer
// was truncated.
func exchange(ctx context.Context, q *dns.Msg, srv string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp"}
	if dl, ok := ctx.Deadline(); ok {
		c.Timeout = time.Until(dl)
	}
	r, _, err := c.ExchangeContext(ctx, q, srv)
	if err == nil && r.Truncated {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, q, srv)
	}
	return r, err
}

// dnsbl asks every zone at once, within timeout, and answers with the
// first zone in the configuration's order that lists a. It returns as
// soon as that is known: a listing by the first zone does not wait for
// the others.
func dnsbl(servers, zones []string, a netip.Addr, timeout time.Duration) *ipc.DnsblAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res := make([]chan zoneResult, len(zones))
	for i, z := range zones {
		res[i] = make(chan zoneResult, 1)
		go func() { res[i] <- askZone(ctx, servers, a, z) }()
	}
	var errs []string
	for i, z := range zones {
		var r zoneResult
		select {
		case r = <-res[i]:
		case <-ctx.Done():
			// A zone that answered in time counts, whichever of the
			// two select saw first.
			select {
			case r = <-res[i]:
			default:
				r = zoneResult{err: fmt.Errorf("no answer within %v", timeout)}
			}
		}
		if isTimeout(r.err) {
			r.err = fmt.Errorf("no answer within %v", timeout)
		}
		if r.listed {
			return &ipc.DnsblAnswer{Zone: z, Answer: r.answer, Err: strings.Join(errs, "; ")}
		}
		if r.err != nil {
			errs = append(errs, z+": "+r.err.Error())
		}
	}
	return &ipc.DnsblAnswer{Err: strings.Join(errs, "; ")}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
