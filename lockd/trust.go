package lockd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"smtp-gated/ipc"
)

// lockd believes nothing a session worker says about a client: a request
// (Policy, Found) is served only for a session master registered to the
// worker that asks (MsgSessionOpen), about that session's client, local
// address and ident; its rate-limit deltas are bounded by what one SMTP
// event can add. A worker that breaks these rules is reported to master
// (MsgBreach), which kills and restarts it.

const (
	// maxSessions bounds the table of registered sessions.
	maxSessions = 65536
	// askTimeout bounds the question to master about a session lockd
	// does not know.
	askTimeout = 3 * time.Second
	// defaultMaxRateFiles bounds the files of ratelimit_path: a client
	// beyond is not counted (and logged) rather than given a file.
	defaultMaxRateFiles = 100000
	// unlimitedBytes bounds the bytes of one message when size_limit is
	// 0; spoolSlack is the spool header on top of size_limit.
	unlimitedBytes = 1 << 40
	spoolSlack     = 64 << 10
)

// sessRec is master's record of one session.
type sessRec struct {
	worker int
	client netip.AddrPort
	local  netip.AddrPort
	ident  string
}

// sessions is the table of registered sessions.
type sessions struct {
	mu sync.Mutex
	m  map[uint64]*sessRec
}

// open records (or updates) a session master registered.
func (t *sessions) open(o *ipc.SessionOpen) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.putLocked(o.ID, o.Worker, o.Client, o.Local, o.Ident)
}

func (t *sessions) putLocked(id uint64, worker int, client, local netip.AddrPort, ident string) *sessRec {
	if t.m == nil {
		t.m = make(map[uint64]*sessRec)
	}
	r, ok := t.m[id]
	if !ok {
		if len(t.m) >= maxSessions {
			// A record whose close was lost: master is asked
			// again if it is still needed.
			for k := range t.m {
				delete(t.m, k)
				break
			}
		}
		r = &sessRec{}
		t.m[id] = r
	}
	r.worker, r.client, r.local, r.ident = worker, client, local, ident
	return r
}

func (t *sessions) close(id uint64) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// errUnknownSession: master does not know the session either (it ended,
// or never was): the request is refused.
var errUnknownSession = errors.New("session not registered by master")

// breachError is a request that breaks the rules: the worker is reported.
type breachError struct{ rule string }

func (e *breachError) Error() string { return e.rule }

// claim is what a request says about its session.
type claim struct {
	worker int
	id     uint64
	client netip.AddrPort
	local  netip.AddrPort // zero: not said
	ident  string
}

// mismatch says how c disagrees with r, "" when it does not.
func (c *claim) mismatch(r *sessRec) string {
	switch {
	case r.worker != c.worker:
		return fmt.Sprintf("request about session %d, which is session worker %d's", c.id, r.worker)
	case r.client != c.client:
		return fmt.Sprintf("client %v is not session %d's", c.client, c.id)
	case c.local.IsValid() && r.local.IsValid() && r.local != c.local:
		return fmt.Sprintf("local address %v is not session %d's", c.local, c.id)
	case r.ident != c.ident:
		return fmt.Sprintf("ident %q is not session %d's", c.ident, c.id)
	}
	return ""
}

// verify checks a request against master's record of its session,
// asking master when lockd has none or its record disagrees (master may
// have learnt the ident since). It returns the record; its taken
// counts are guarded by s.sess.mu.
func (s *server) verify(c *claim) (*sessRec, error) {
	s.sess.mu.Lock()
	r, ok := s.sess.m[c.id]
	rule := ""
	if ok {
		rule = c.mismatch(r)
	}
	s.sess.mu.Unlock()
	switch {
	case ok && rule == "":
		return r, nil
	case s.master == nil && ok: // no master to ask (tests)
		return nil, &breachError{rule}
	case s.master == nil:
		return nil, errUnknownSession
	}
	info, err := s.askMaster(c.id)
	if err != nil {
		return nil, fmt.Errorf("%w (master: %v)", errUnknownSession, err)
	}
	if !info.Known {
		return nil, errUnknownSession
	}
	s.sess.mu.Lock()
	r = s.sess.putLocked(c.id, info.Worker, info.Client, info.Local, info.Ident)
	rule = c.mismatch(r)
	s.sess.mu.Unlock()
	if rule != "" {
		return nil, &breachError{rule}
	}
	return r, nil
}

// askMaster asks master for its record of session id.
func (s *server) askMaster(id uint64) (*ipc.SessionInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), askTimeout)
	defer cancel()
	m, err := s.master.Call(ctx, ipc.MsgSessionAsk, &ipc.SessionAsk{ID: id}, ipc.MsgSessionInfo)
	if err != nil {
		return nil, err
	}
	return m.Payload.(*ipc.SessionInfo), nil
}

// reportBreach tells master that worker broke a rule, and logs it.
func (s *server) reportBreach(worker int, id uint64, rule string) {
	s.log.Errf("[%d] session worker %d broke the rules: %s: told master", id, worker, rule)
	if s.master == nil {
		return
	}
	if err := s.master.Send(ipc.MsgBreach, &ipc.Breach{Worker: worker, ID: id, Rule: rule}); err != nil {
		s.log.Errf("telling master of a breach: %v", err)
	}
}

// checkPolicy checks a worker's Policy request: its session, and its
// deltas. Each delta is one SMTP event: a message or a recipient counted,
// one refusal, one connection, or the bytes of one message (at most
// size_limit); nothing is given back (as in 1.4, a message or recipient
// the MTA refused stays counted). Take names each counter once.
func (s *server) checkPolicy(worker int, q *ipc.Policy) (*sessRec, error) {
	r, err := s.verify(&claim{worker: worker, id: q.ID, client: q.Client, ident: q.Ident})
	if err != nil {
		return nil, err
	}
	maxBytes := int64(unlimitedBytes)
	if sl := s.cfg.Load().SizeLimit; sl > 0 {
		maxBytes = int64(sl) + spoolSlack
	}
	for _, d := range q.Add {
		hi := int64(1)
		if d.Name == ipc.RateBytes {
			hi = maxBytes
		}
		if counterIndex(d.Name) < 0 || d.N < 0 || d.N > hi {
			return nil, &breachError{fmt.Sprintf("rate-limit delta %s %d is more than one SMTP event gives", d.Name, d.N)}
		}
	}
	seen := map[string]bool{}
	for _, n := range q.Take {
		if seen[n] {
			return nil, &breachError{fmt.Sprintf("counter %s taken twice in one request", n)}
		}
		seen[n] = true
	}
	return r, nil
}

// checkFound checks a worker's Found: its session, client, local address
// and ident.
func (s *server) checkFound(worker int, f *ipc.Found) error {
	_, err := s.verify(&claim{worker: worker, id: f.ID, client: f.Client, local: f.Local, ident: f.Ident})
	return err
}

// refusal turns a failed check into the error text of the answer, and
// reports a breach.
func (s *server) refusal(worker int, id uint64, err error) string {
	var b *breachError
	if errors.As(err, &b) {
		s.reportBreach(worker, id, b.rule)
		return "refused: " + b.rule
	}
	s.log.Warningf("[%d] session worker %d: %v: refused", id, worker, err)
	return err.Error()
}
