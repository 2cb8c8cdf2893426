package logx

import (
	"net/netip"
	"testing"
)

// The CLOSE lines as a 1.4 log watcher reads them.
func TestCloseLine(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.1:40000")
	c := Close{By: "quit", ClientRx: 10, ServerRx: 20, Trns: 1, Rcpts: 2, Auth: 3, Secs: 4, Src: src, Ident: "bob", ID: 7}
	if got, want := c.Line(), "CLOSE by=quit, rcv=10/20, trns=1, rcpts=2, auth=3, time=4, src=192.0.2.1, ident=bob, src_port=40000, id=7"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	c.Direct = true
	if got, want := c.Line(), "CLOSE:DIRECT by=quit rcv=10/20, time=4, src=192.0.2.1, ident=bob, trns=1, rcpts=2, auth=3, src_port=40000, id=7"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
