package session

import (
	"strings"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// Streaming a message to the virus scanner while it arrives (scan_stream;
// the scanner's side is scanner/stream.go). At the MTA's 354 the session
// sends the scanner process MsgScanStart with a read-only descriptor of
// the spool file it is about to write; the scanner follows the file as it
// grows and feeds clamd. At the final dot, scan sends MsgScanFinish (a
// MsgScan with the descriptor) instead of MsgScan, and waits for the
// verdict as usual. A message that ends otherwise (the client went away,
// size_limit, the MTA or the spool failed) sends MsgScanAbort, so that
// the scanner lets go of the file and of clamd at once.

// scanStream is the session's side of one streamed message. A nil
// *scanStream is a message that is not streamed; its methods do nothing.
type scanStream struct {
	link scanLink // the scanner link the stream was started on
	id   uint64
	trns int
	over bool // finished or aborted
}

// startScan starts streaming the message to the scanner, when it is to be
// streamed, and returns the stream; nil otherwise. It does not wait for
// the scanner: a stream that cannot start is found out at the dot, where
// the scanner scans the whole file instead.
func (e *engine) startScan(sp *spoolFile) *scanStream {
	if !e.streamed() || sp == nil || sp.f == nil || sp.err != nil {
		return nil
	}
	link := e.p.scanLink()
	if link == nil {
		return nil // scan says why at the dot
	}
	f, err := sp.readOnly()
	if err != nil {
		e.log.Debugf("[%d] scan stream: %v", e.c.id, err)
		return nil
	}
	st := &scanStream{link: link, id: e.c.id, trns: int(e.c.trns.Load())}
	q := &ipc.ScanStart{SessionID: st.id, Transaction: st.trns, Client: e.c.src}
	var serr error
	rc, err := f.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { serr = link.scanStart(q, int(fd)) })
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		e.log.Debugf("[%d] scan stream: %v", e.c.id, err)
		return nil
	}
	return st
}

// streamed reports whether the message goes to clamd while it arrives:
// scan_stream yes, or auto with clamd over TCP (over a unix socket the
// spool file goes as a descriptor at the dot, which is as fast and copies
// nothing); never when clamd will not read the message (auth_skip antivir,
// scan_max_size 0).
func (e *engine) streamed() bool {
	cfg := e.cfg
	if av, _ := e.scanners(-1); !av || cfg.AntivirusType != config.AntivirusClamd {
		return false
	}
	switch cfg.ScanStream {
	case config.ScanStreamYes:
		return true
	case config.ScanStreamAuto:
		return !strings.HasPrefix(cfg.AntivirusPath, "/")
	}
	return false
}

// finish hands the stream to the scan at the dot: it returns the message
// type to send on link, MsgScanFinish when the stream was started on that
// link, MsgScan otherwise (no stream, or the scanner process was restarted
// meanwhile and its streams are gone with its link).
func (st *scanStream) finish(link scanLink) ipc.Type {
	if st == nil || st.over {
		return ipc.MsgScan
	}
	st.over = true
	if st.link != link {
		return ipc.MsgScan
	}
	return ipc.MsgScanFinish
}

// abandon tells the scanner to drop a stream the scan did not take (the
// message ended before its dot, or was not scanned).
func (st *scanStream) abandon() {
	if st == nil || st.over {
		return
	}
	st.over = true
	st.link.scanAbort(&ipc.ScanAbort{SessionID: st.id, Transaction: st.trns})
}
