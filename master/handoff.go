package master

import (
	"context"
	"net"
	"os/exec"
	"time"

	"smtp-gated/ipc"
)

// The hand-off of accepted connections to session workers never waits for
// a worker: admit puts the session in the chosen worker's queue, and a
// sender of that worker's own writes it on the link. A worker that does
// not keep up is skipped for new clients, one that stops answering the
// heartbeat is killed, and the sessions it never took go to another.
const (
	// handQueue is the length of a worker's queue of sessions waiting
	// for its sender; a worker whose queue is full gets no new sessions.
	handQueue = 256
	// maxUntaken: a worker with this many sessions handed but not yet
	// taken (MsgSessionTaken) gets no new sessions.
	maxUntaken = 256
	// pingEvery is the heartbeat's period. A worker that has not
	// answered for pongLate gets no new sessions; one that has not
	// answered for pongDead is killed and restarted.
	pingEvery = time.Second
	pongLate  = 2 * time.Second
	pongDead  = 10 * time.Second
)

// link is one running session worker's hand-off state: its queue and the
// end of its sender and heartbeat. A new one is made for every process
// the slot runs.
type link struct {
	queue chan uint64   // session ids for the sender
	stop  chan struct{} // closed when the process has exited
}

// late reports whether worker p has not answered the heartbeat for
// pongLate.
func (p *proc) late(now time.Time) bool {
	return now.Sub(time.Unix(0, p.lastPong.Load())) > pongLate
}

// sendSessions is the sender of one worker process: it writes the
// sessions of its queue on the link, each with the client socket. A write
// may wait (the worker does not read): only this goroutine waits. A write
// that fails ends the process, whose untaken sessions then go to another
// worker (rehand).
func (s *supervisor) sendSessions(p *proc, peer *ipc.Peer, cmd *exec.Cmd, l *link) {
	for {
		var id uint64
		select {
		case <-l.stop:
			return
		case id = <-l.queue:
		}
		if p.link.Load() != l {
			continue
		}
		c, ns, ok := s.adm.handing(p, id)
		if !ok {
			continue
		}
		if err := handOff(peer, c, ns); err != nil {
			select {
			case <-l.stop:
			default:
				s.log.Errf("hand-off of session %d to %v (pid %d): %v; killing it", id, p, cmd.Process.Pid, err)
				cmd.Process.Kill()
			}
			return
		}
	}
}

// handOff sends the client socket to a worker. The kernel duplicates the
// descriptor on its way; master keeps its copy until the worker says it
// took the session.
func handOff(peer *ipc.Peer, c *net.TCPConn, ns *ipc.NewSession) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = peer.Send(ipc.MsgNewSession, ns, int(fd)) }); err != nil {
		return err
	}
	return serr
}

// heartbeat pings one worker process every pingEvery until it exits, and
// kills it when it has not answered for pongDead. A ping whose write
// waits (the link is full) is not repeated until it is written.
func (s *supervisor) heartbeat(p *proc, peer *ipc.Peer, cmd *exec.Cmd, l *link) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	inflight := make(chan struct{}, 1)
	wasLate := false
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		silent := now.Sub(time.Unix(0, p.lastPong.Load()))
		switch {
		case silent >= pongDead:
			s.log.Errf("%v (pid %d) has not answered for %v: killing it", p, cmd.Process.Pid, silent.Round(time.Second))
			cmd.Process.Kill()
			return
		case silent > pongLate && !wasLate:
			s.log.Warningf("%v (pid %d) has not answered for %v: no new sessions for it", p, cmd.Process.Pid, silent.Round(time.Second))
			wasLate = true
		case silent <= pongLate && wasLate:
			s.log.Noticef("%v (pid %d) answers again", p, cmd.Process.Pid)
			wasLate = false
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue
		}
		go func() {
			defer func() { <-inflight }()
			ctx, cancel := context.WithTimeout(context.Background(), pongDead)
			defer cancel()
			r, err := peer.Call(ctx, ipc.MsgPing, &ipc.Ping{}, ipc.MsgPong)
			if err != nil {
				return
			}
			r.Close()
			select {
			case <-l.stop:
			default:
				p.lastPong.Store(time.Now().UnixNano())
			}
		}()
	}
}
