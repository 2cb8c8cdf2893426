package scanner

import (
	"context"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// fromMaster is the dispatch of messages from master.
func (s *server) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Config:
		old := s.cfg.Load()
		if cfg := s.env.Reconfigure(p, m, v); cfg != nil {
			cfg = cfg.OnHost()
			s.env.Refit(cfg, confinePaths(cfg))
			s.cfg.Store(cfg)
			if scannersChanged(old, cfg) {
				go s.probe(cfg)
			}
		}
	case *ipc.PeerLink:
		s.env.ServeSessionLink(m, v, s.fromSession, s.streams.dropLink)
	default:
		m.Close()
		s.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromSession is the dispatch of messages from one session worker. A scan
// takes up to timeout_scanner + timeout_spam: it runs on a goroutine of its
// own, so that the link keeps serving the worker's other sessions.
func (s *server) fromSession(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.ScanStart:
		s.streams.start(p, s.engine(), v, m.TakeFile(0))
	case *ipc.ScanAbort:
		s.streams.abort(p, v.SessionID, v.Transaction)
	case *ipc.Scan: // MsgScan, MsgScanFinish
		f := m.TakeFile(0)
		var st *stream
		if m.Type == ipc.MsgScanFinish {
			st = s.streams.take(p, v.SessionID, v.Transaction)
		}
		go func() {
			defer f.Close()
			e := s.engine()
			if st != nil {
				defer st.cancel() // a scan that skipped clamd leaves it running
				e.stream = st.antivirus(e.cfg)
			}
			verdict := e.scan(context.Background(), v, f)
			if err := p.Reply(m, ipc.MsgVerdict, verdict); err != nil {
				s.env.Log.Errf("verdict for session %d to %s: %v", v.SessionID, p.Name, err)
			}
		}()
	default:
		m.Close()
		s.env.Log.Errf("unexpected %v from %s: closing the link", m.Type, p.Name)
		p.Close()
	}
}

// scannersChanged reports whether a reload changed what probe checks.
func scannersChanged(a, b *config.Config) bool {
	return a.AntivirusType != b.AntivirusType || a.AntivirusPath != b.AntivirusPath ||
		a.AntispamType != b.AntispamType || a.AntispamPath != b.AntispamPath
}
