package lockd

import (
	"fmt"
	"time"

	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// fromMaster is the dispatch of messages from master. Work that touches
// files runs on a goroutine of its own, so that the link keeps serving.
func (s *server) fromMaster(p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Config:
		old := s.cfg.Load()
		if cfg := s.env.Reconfigure(p, m, v); cfg != nil {
			cfg = s.view(cfg)
			s.env.Refit(cfg, confinePaths(cfg))
			s.cfg.Store(cfg)
			s.watch.watch(cfg)
			// lock_duration, lock_path: what the workers kept is
			// stale.
			s.gen.bump()
			if old.LockPath != cfg.LockPath || old.RatelimitPath != cfg.RatelimitPath ||
				old.Locking() != cfg.Locking() || old.Rating() != cfg.Rating() {
				makeDirs(cfg, s.log) // as set_user now: only where it may
				s.checkDirs(cfg)
			}
		}
	case *ipc.PeerLink:
		worker := v.Index
		sp := s.env.ServeSessionLink(m, v, func(p *ipc.Peer, m *ipc.Msg) { s.fromSession(worker, p, m) }, nil)
		if s.gen != nil {
			if err := sp.Send(ipc.MsgPolicyGen, &ipc.PolicyGen{Size: s.gen.size}, s.gen.fd); err != nil {
				s.log.Errf("generation page to %s: %v", sp.Name, err)
			}
		}
	case *ipc.SessionOpen:
		s.sess.open(v)
	case *ipc.SessionClosed:
		s.sess.close(v.ID)
	case *ipc.Found:
		go func() {
			ack := &ipc.Ack{}
			if err := s.found(v); err != nil {
				ack.Err = err.Error()
			}
			if err := p.Reply(m, ipc.MsgAck, ack); err != nil {
				s.log.Errf("reply to master: %v", err)
			}
		}()
	case *ipc.LockdCtl:
		go func() {
			if err := p.Reply(m, ipc.MsgLockdReply, s.control(v)); err != nil {
				s.log.Errf("reply to master: %v", err)
			}
		}()
	default:
		m.Close()
		s.env.Fatalf("unexpected %v from master", m.Type)
	}
}

// fromSession is the dispatch of messages from one session worker. Each
// request runs on a goroutine of its own: requests about different
// clients go on in parallel, those about one client one at a time
// (keyLocks). A worker waits for each answer before it asks again for the
// same session, so its requests keep their order.
func (s *server) fromSession(worker int, p *ipc.Peer, m *ipc.Msg) {
	switch v := m.Payload.(type) {
	case *ipc.Policy:
		go func() {
			var a *ipc.PolicyAnswer
			if _, err := s.checkPolicy(worker, v); err != nil {
				a = &ipc.PolicyAnswer{Err: s.refusal(worker, v.ID, err)}
			} else {
				a = s.policy(v)
			}
			if err := p.Reply(m, ipc.MsgPolicyAnswer, a); err != nil {
				s.log.Errf("[%d] reply to %s: %v", v.ID, p.Name, err)
			}
		}()
	case *ipc.Found:
		go func() {
			ack := &ipc.Ack{}
			if err := s.checkFound(worker, v); err != nil {
				ack.Err = s.refusal(worker, v.ID, err)
			} else if err := s.found(v); err != nil {
				ack.Err = err.Error()
			}
			if err := p.Reply(m, ipc.MsgAck, ack); err != nil {
				s.log.Errf("[%d] reply to %s: %v", v.ID, p.Name, err)
			}
		}()
	default:
		m.Close()
		s.log.Errf("unexpected %v from %s: closing the link", m.Type, p.Name)
		p.Close()
	}
}

// policy answers a Policy request (see ipc.Policy).
func (s *server) policy(q *ipc.Policy) *ipc.PolicyAnswer {
	cfg := s.cfg.Load()
	a := &ipc.PolicyAnswer{}
	c, err := newClient(q.Client.Addr(), q.Ident)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	unlock := s.keys.lock(c.addr)
	defer unlock()
	now := time.Now()
	if q.Lock && cfg.Locking() {
		locked, cause, err := s.lockState(cfg, c, now)
		if err != nil {
			s.log.Errf("[%d] %v: lock state: %v", q.ID, c, err)
			a.Err = err.Error()
			return a
		}
		a.Locked, a.Cause = locked, cause
	}
	if a.Locked {
		// Nothing is taken for a locked client; what happened is still
		// counted.
		r := *q
		r.Check, r.Take = nil, nil
		q = &r
	}
	if cfg.Rating() && len(q.Add)+len(q.Check)+len(q.Take) > 0 {
		over, err := s.rate(cfg, c, q, now)
		if err != nil {
			s.log.Errf("[%d] %v: rate limits: %v", q.ID, c, err)
			return &ipc.PolicyAnswer{Err: err.Error()}
		}
		a.Over = over
	}
	return a
}

// found handles an event: a lock when lock_on names it (unless an
// administrator's file protects the client, or it is locked already),
// then action_script, per the manual: when the lock was made, and for
// virus, spam, maxhost and maxident also when the event does not lock
// (not in lock_on, lock_duration 0, a protected client, a lock that could
// not be made). The lock exists when found returns; the script runs later.
func (s *server) found(f *ipc.Found) error {
	cfg := s.cfg.Load()
	if !f.Event.IsEvent() {
		return fmt.Errorf("unknown event %v", f.Event)
	}
	c, err := newClient(f.Client.Addr(), f.Ident)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("%s from %v", f.Event, c)
	if f.Detail != "" {
		what += " (" + printable(f.Detail) + ")"
	}
	lock := cfg.Locks(f.Event)
	var res lockResult
	var lerr error
	if lock {
		now := time.Now()
		unlock := s.keys.lock(c.addr)
		res, lerr = s.makeLock(cfg, c, lockCause(f), time.Time{}, false, now)
		// Before the answer: the session that reported the event, and
		// every one after, must not find the client unlocked in what a
		// worker kept.
		s.gen.bump()
		unlock()
		switch {
		case lerr != nil:
			s.log.Errf("[%d] LOCK %v for %s failed: %v", f.ID, c, what, lerr)
		case res.created:
			until := "forever"
			if cfg.LockDuration > 0 {
				until = now.Add(time.Duration(cfg.LockDuration) * time.Second).Format(time.DateTime)
			}
			// 1.4's line, then ours.
			s.log.Eventf(logx.Notice, "LOCK:CREATED (%s): %s, src=%v, ident=%s, detail=%s, until=%s, id=%d",
				res.path, f.Event, c.addr, identOrDash(c.ident), printable(f.Detail), until, f.ID)
		case res.protector != nil:
			s.log.Noticef("[%d] LOCK %v: not locked for %s: %s belongs to %s, an administrator's file",
				f.ID, c, what, res.protector.path, ownerName(res.protector.owner))
		default:
			s.log.Debugf("[%d] %v locked already: %s", f.ID, c, what)
		}
	}
	run := res.created || (f.Event.RunsScript() && (!lock || res.protector != nil || lerr != nil))
	if run && cfg.ActionScript != "" {
		lockFile := ""
		if res.created {
			lockFile = res.path
		}
		s.script.start(cfg, scriptArgs(f), scriptEnv(cfg, f, lockFile), what)
	}
	return lerr
}
