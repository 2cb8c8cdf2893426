package session

import (
	"context"
	"errors"

	"smtp-gated/ipc"
)

// peers is what the session engine asks of the processes outside the
// session worker: the lookup process (DNSBL, SPF), lockd (locks, rate
// limits, events) and the scanner. The worker is the real one, over its
// IPC links; a test gives the engine fakes.
type peers interface {
	// dnsblListed returns the first dnsbl zone that lists the client and
	// the address it answered, "" when none does or the look-up failed
	// (logged).
	dnsblListed(c *conn) (zone, answer string)
	// spfCheck asks the lookup process for SPF.
	spfCheck(c *conn, q *ipc.SpfQuery) (*ipc.SpfAnswer, error)
	// askLockd sends one Policy request and waits, bounded, for the answer.
	askLockd(ctx context.Context, q *ipc.Policy) (*ipc.PolicyAnswer, error)
	// report tells lockd of an event (a virus, a DNSBL listing...).
	report(c *conn, f *ipc.Found)
	// scanLink is the link to the scanner process, nil when there is none.
	scanLink() scanLink
}

// scanLink is one link to the scanner process. Two values are equal when
// they are the same link: a stream started on one link is gone when the
// scanner was restarted meanwhile.
type scanLink interface {
	// scanStart starts streaming the spool file fd to the scanner.
	scanStart(q *ipc.ScanStart, fd int) error
	// scan asks for the verdict on the spool file fd; typ is MsgScan, or
	// MsgScanFinish for a message whose stream was started on this link.
	scan(ctx context.Context, typ ipc.Type, q *ipc.Scan, fd int) (*ipc.Verdict, error)
	// scanAbort drops a stream.
	scanAbort(q *ipc.ScanAbort)
}

// spfCheck is peers.spfCheck over the link to the lookup process.
func (w *worker) spfCheck(c *conn, q *ipc.SpfQuery) (*ipc.SpfAnswer, error) {
	m, err := w.askLookup(c, ipc.MsgSpfQuery, q, ipc.MsgSpfAnswer)
	if err != nil {
		return nil, err
	}
	return m.Payload.(*ipc.SpfAnswer), nil
}

// scanLink is peers.scanLink: the worker's current link to the scanner.
func (w *worker) scanLink() scanLink {
	p := w.scanner.Load()
	if p == nil {
		return nil
	}
	return ipcScanner{p}
}

// ipcScanner is a scanLink over an IPC link.
type ipcScanner struct{ p *ipc.Peer }

func (s ipcScanner) scanStart(q *ipc.ScanStart, fd int) error {
	return s.p.Send(ipc.MsgScanStart, q, fd)
}

func (s ipcScanner) scan(ctx context.Context, typ ipc.Type, q *ipc.Scan, fd int) (*ipc.Verdict, error) {
	m, err := s.p.Call(ctx, typ, q, ipc.MsgVerdict, fd)
	if err != nil {
		return nil, err
	}
	v, ok := m.Payload.(*ipc.Verdict)
	if !ok {
		return nil, errors.New("not a verdict")
	}
	return v, nil
}

// scanAbort: a link that is gone has dropped the stream already, so the
// error is of no interest.
func (s ipcScanner) scanAbort(q *ipc.ScanAbort) {
	s.p.Send(ipc.MsgScanAbort, q)
}
