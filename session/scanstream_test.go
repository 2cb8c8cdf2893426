package session

import (
	"testing"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// Which messages are streamed: scan_stream, the transport, auth_skip.
func TestStreamed(t *testing.T) {
	tests := []struct {
		av     config.AntivirusType
		path   string
		stream config.ScanStream
		authed bool
		skip   config.AuthSkip
		want   bool
	}{
		{config.AntivirusClamd, "127.0.0.1:3310", config.ScanStreamAuto, false, 0, true},
		{config.AntivirusClamd, "/run/clamd.ctl", config.ScanStreamAuto, false, 0, false},
		{config.AntivirusClamd, "/run/clamd.ctl", config.ScanStreamYes, false, 0, true},
		{config.AntivirusClamd, "127.0.0.1:3310", config.ScanStreamNo, false, 0, false},
		{config.AntivirusMksd, "/run/mksd.sock", config.ScanStreamYes, false, 0, false},
		{config.AntivirusOff, "127.0.0.1:3310", config.ScanStreamYes, false, 0, false},
		{config.AntivirusClamd, "127.0.0.1:3310", config.ScanStreamYes, true, config.AuthSkipAntivir, false},
		{config.AntivirusClamd, "127.0.0.1:3310", config.ScanStreamYes, false, config.AuthSkipAntivir, true},
		{config.AntivirusClamd, "127.0.0.1:3310", config.ScanStreamYes, true, config.AuthSkipAntispam, true},
	}
	for _, tt := range tests {
		cfg := config.Default()
		cfg.AntivirusType, cfg.AntivirusPath, cfg.ScanStream, cfg.AuthSkip = tt.av, tt.path, tt.stream, tt.skip
		e := &engine{cfg: cfg, authed: tt.authed}
		if got := e.streamed(); got != tt.want {
			t.Errorf("%v %s scan_stream %v authed %v auth_skip %v: got %v, want %v", tt.av, tt.path, tt.stream, tt.authed, tt.skip, got, tt.want)
		}
	}
	if got := config.Default().ScanStream; got != config.ScanStreamAuto {
		t.Errorf("default scan_stream %v, want auto", got)
	}
}

// scannerLink is a session worker's link to a fake scanner process that
// records what it receives.
func scannerLink(t *testing.T) (*ipc.Peer, chan *ipc.Msg) {
	t.Helper()
	ca, cb, err := ipc.ConnPair()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *ipc.Msg, 10)
	scanner := ipc.NewPeer(cb, "session 0", func(p *ipc.Peer, m *ipc.Msg) { m.Close(); got <- m })
	go scanner.Run()
	session := ipc.NewPeer(ca, "scanner", func(p *ipc.Peer, m *ipc.Msg) { m.Close() })
	go session.Run()
	t.Cleanup(func() { session.Close(); scanner.Close() })
	return session, got
}

// A stream ends exactly once: taken by the scan at the dot (MsgScanFinish
// on the link it started on, MsgScan on another), or abandoned with one
// MsgScanAbort.
func TestScanStreamEnds(t *testing.T) {
	p, got := scannerLink(t)
	o, _ := scannerLink(t)
	peer, other := ipcScanner{p}, ipcScanner{o}

	var none *scanStream
	if typ := none.finish(peer); typ != ipc.MsgScan {
		t.Errorf("no stream: %v, want MsgScan", typ)
	}
	none.abandon() // nothing to do, no panic

	st := &scanStream{link: peer, id: 12, trns: 3}
	if typ := st.finish(peer); typ != ipc.MsgScanFinish {
		t.Errorf("stream on the same link: %v, want MsgScanFinish", typ)
	}
	st.abandon() // taken: no abort
	if typ := st.finish(peer); typ != ipc.MsgScan {
		t.Errorf("finished twice: %v, want MsgScan", typ)
	}

	st = &scanStream{link: peer, id: 12, trns: 4}
	if typ := st.finish(other); typ != ipc.MsgScan {
		t.Errorf("scanner restarted: %v, want MsgScan", typ)
	}

	st = &scanStream{link: peer, id: 13, trns: 1}
	st.abandon()
	st.abandon()
	select {
	case m := <-got:
		a, ok := m.Payload.(*ipc.ScanAbort)
		if m.Type != ipc.MsgScanAbort || !ok || a.SessionID != 13 || a.Transaction != 1 {
			t.Errorf("got %v %+v, want SCAN_ABORT for session 13 trns 1", m.Type, m.Payload)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no MsgScanAbort")
	}
	select {
	case m := <-got:
		t.Errorf("a second message %v %+v: the stream was abandoned twice", m.Type, m.Payload)
	case <-time.After(100 * time.Millisecond):
	}
}
