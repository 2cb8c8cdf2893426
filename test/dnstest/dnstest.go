// Package dnstest is a DNS server for tests: miekg/dns on a loopback UDP
// (and TCP) port, answering from records the test gives. It stands in for
// the world's DNS in the DNSBL and SPF tests, which never use
// /etc/resolv.conf.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server is a running test DNS server.
type Server struct {
	Addr string // "127.0.0.1:PORT", for dns_server

	mu      sync.Mutex
	a       map[string][]string // name → IPv4 addresses
	txt     map[string][]string // name → TXT strings
	fail    map[string]int      // name → rcode to answer (SERVFAIL, ...)
	drop    map[string]bool     // name → never answer
	queries []string            // "TYPE name", in order
	udp     *dns.Server
	tcp     *dns.Server
}

// Start starts a server on 127.0.0.1; t.Cleanup stops it.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{a: map[string][]string{}, txt: map[string][]string{}, fail: map[string]int{}, drop: map[string]bool{}}
	// UDP and TCP on one port: a port free for UDP may be taken for TCP
	// by another test binary, so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		s.Addr = pc.LocalAddr().String()
		if ln, err = net.Listen("tcp", s.Addr); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", s.handle)
	s.udp = &dns.Server{PacketConn: pc, Handler: mux}
	s.tcp = &dns.Server{Listener: ln, Handler: mux}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("test DNS server did not start")
		}
	}
	t.Cleanup(func() { s.udp.Shutdown(); s.tcp.Shutdown() })
	return s
}

func key(name string) string { return strings.ToLower(dns.Fqdn(name)) }

// A adds A records.
func (s *Server) A(name string, addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.a[key(name)] = append(s.a[key(name)], addrs...)
}

// TXT adds a TXT record.
func (s *Server) TXT(name, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.txt[key(name)] = append(s.txt[key(name)], text)
}

// Fail makes every query for name (and the names below it) answer rcode.
func (s *Server) Fail(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[key(name)] = rcode
}

// Drop makes every query for name (and the names below it) go unanswered.
func (s *Server) Drop(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop[key(name)] = true
}

// Queries returns the queries received so far ("A name.", "TXT name.").
func (s *Server) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

// under reports whether name is domain or below it, per map m.
func under[V any](m map[string]V, name string) (V, bool) {
	for d, v := range m {
		if name == d || strings.HasSuffix(name, "."+d) {
			return v, true
		}
	}
	var zero V
	return zero, false
}

func (s *Server) handle(w dns.ResponseWriter, q *dns.Msg) {
	if len(q.Question) != 1 {
		return
	}
	qq := q.Question[0]
	name := strings.ToLower(qq.Name)
	s.mu.Lock()
	s.queries = append(s.queries, dns.TypeToString[qq.Qtype]+" "+name)
	_, drop := under(s.drop, name)
	rcode, fail := under(s.fail, name)
	as, txts := s.a[name], s.txt[name]
	_, exists := s.a[name]
	if _, ok := s.txt[name]; ok {
		exists = true
	}
	s.mu.Unlock()
	if drop {
		return
	}
	r := new(dns.Msg)
	r.SetReply(q)
	r.Authoritative = true
	switch {
	case fail:
		r.Rcode = rcode
	case !exists:
		r.Rcode = dns.RcodeNameError
	case qq.Qtype == dns.TypeA:
		for _, a := range as {
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(a).To4()})
		}
	case qq.Qtype == dns.TypeTXT:
		for _, t := range txts {
			r.Answer = append(r.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{t}})
		}
	}
	w.WriteMsg(r)
}
