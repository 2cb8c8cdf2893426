package session

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// rig is one session of the engine between a client and an MTA that the
// test plays line by line, with fake peers.
type rig struct {
	t    *testing.T
	c    *conn
	e    *engine
	cli  *net.TCPConn
	cr   *bufio.Reader
	mta  *net.TCPConn
	mr   *bufio.Reader
	done chan struct{}
}

// rigConfig is the engine's configuration in a rig: fixed mode, no NAT
// header, the scanner on.
func rigConfig() *config.Config {
	cfg := fuzzConfig(0, true)
	cfg.PipelineSize = 16
	return cfg
}

// startRig runs a session; the MTA's greeting is the test's first line.
func startRig(t *testing.T, cfg *config.Config, p peers) *rig {
	t.Helper()
	client, proxyCli, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	proxySrv, mtaSide, err := loopPair()
	if err != nil {
		t.Fatal(err)
	}
	sp := prepareSpool(t.TempDir(), 0o600, -1, -1)
	w := &worker{log: fuzzLog, spool: sp}
	w.cfg.Store(cfg)
	c := &conn{id: 1, cfg: cfg, client: proxyCli, start: time.Now(), by: "error",
		src: proxyCli.RemoteAddr().(*net.TCPAddr).AddrPort(),
		dst: proxySrv.RemoteAddr().(*net.TCPAddr).AddrPort()}
	c.local = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 25)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	e := newEngine(w, c, proxySrv)
	e.p = p
	r := &rig{t: t, c: c, e: e, cli: client, cr: bufio.NewReader(client), mta: mtaSide, mr: bufio.NewReader(mtaSide), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer proxyCli.Close()
		defer proxySrv.Close()
		e.run()
	}()
	t.Cleanup(func() {
		client.Close()
		mtaSide.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Errorf("the engine did not end")
		}
		c.cancel()
	})
	return r
}

// side returns the connection and reader of "c" (client) or "m" (MTA).
func (r *rig) side(s string) (*net.TCPConn, *bufio.Reader) {
	if s == "c" {
		return r.cli, r.cr
	}
	return r.mta, r.mr
}

// send writes line and CRLF from side s.
func (r *rig) send(s, line string) {
	r.t.Helper()
	c, _ := r.side(s)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\r\n"); err != nil {
		r.t.Fatalf("%s -> %q: %v", s, line, err)
	}
}

// expect reads one line at side s; it must be want (without CRLF).
func (r *rig) expect(s, want string) {
	r.t.Helper()
	c, br := r.side(s)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := br.ReadString('\n')
	if err != nil || strings.TrimSuffix(got, "\r\n") != want {
		r.t.Fatalf("%s <- %q, %v; want %q", s, got, err, want)
	}
}

// eof waits at most d for the end of side s's connection; what arrives
// before it is returned.
func (r *rig) eof(s string, d time.Duration) string {
	r.t.Helper()
	c, br := r.side(s)
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(br)
	if err != nil {
		r.t.Fatalf("%s: no end of file within %v: %v (read %q)", s, d, err, b)
	}
	return string(b)
}

// wait waits for the engine to end and returns the session's close
// cause.
func (r *rig) wait() ipc.CloseCause {
	r.t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Fatalf("the engine did not end")
	}
	return r.c.by
}

// transaction plays a greeting, EHLO, MAIL, RCPT and DATA up to the
// MTA's 354.
func (r *rig) transaction() {
	r.t.Helper()
	r.send("m", "220 mta.test ESMTP")
	r.expect("c", "220 mta.test ESMTP")
	r.send("c", "EHLO client.test")
	r.expect("m", "EHLO client.test")
	r.send("m", "250 mta.test")
	r.expect("c", "250 mta.test")
	r.send("c", "MAIL FROM:<a@client.test>")
	r.expect("m", "MAIL FROM:<a@client.test>")
	r.send("m", "250 2.1.0 Ok")
	r.expect("c", "250 2.1.0 Ok")
	r.send("c", "RCPT TO:<b@mta.test>")
	r.expect("m", "RCPT TO:<b@mta.test>")
	r.send("m", "250 2.1.5 Ok")
	r.expect("c", "250 2.1.5 Ok")
	r.send("c", "DATA")
	r.expect("m", "DATA")
	r.send("m", "354 go ahead")
	r.expect("c", "354 go ahead")
}
