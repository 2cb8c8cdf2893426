package session

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/ipc"
)

// A session's state, as the status file shows it (smtp-gated(8), STATUS
// FILE). The engine sets it where the session moves on.
type state uint32

const (
	stStart    state = iota // handed over by master, nothing done yet
	stIdent                 // asking the lookup process for the destination
	stConnect               // connecting to the MTA
	stPre                   // waiting for the MTA's greeting
	stHelo                  // in the SMTP dialogue (after the greeting)
	stData                  // receiving a message
	stScan                  // waiting for the scanner's verdict
	stPost                  // the final dot released, waiting for the MTA's reply
	stRset                  // after RSET
	stQuit                  // after QUIT
	stDirect                // direct proxy (STARTTLS, auth_skip direct)
	stTakeover              // the proxy talks to the client alone
	stDnsdb                 // asking the DNSBL zones (at MAIL FROM, auth_skip dnsbl)
	stSpf                   // asking SPF about MAIL FROM
)

var stateNames = [...]ipc.SessionState{ipc.StateStart, ipc.StateIdent, ipc.StateConnect, ipc.StatePre,
	ipc.StateHelo, ipc.StateData, ipc.StateScan, ipc.StatePost, ipc.StateRset, ipc.StateQuit,
	ipc.StateDirect, ipc.StateTakeover, ipc.StateDnsdb, ipc.StateSpf}

// wire is the state as the catalogue names it.
func (s state) wire() ipc.SessionState {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return ipc.StateStart
}

func (s state) String() string { return string(s.wire()) }

// live is the part of a conn that other goroutines read while the
// session runs: the status query and kill, on the worker's link to
// master.
type live struct {
	state    atomic.Uint32
	cliRx    atomic.Uint64 // bytes received from the client
	srvRx    atomic.Uint64 // bytes received from the MTA
	trns     atomic.Int32  // transactions (DATA answered 354)
	authFlag atomic.Int32  // authAdvertised | authAccepted | authRejected
	killed   atomic.Bool   // ended by `smtpgatectl kill`
	events   atomic.Uint32 // ipc.Event* bits, for master's counters

	// ctx ends with the session, or when it is killed: look-ups, the
	// connection to the MTA and the scanner's verdict wait on it.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // guards target, and conn's ident, for readers elsewhere
	target netip.AddrPort
}

func (c *conn) setState(s state) { c.state.Store(uint32(s)) }

// setDestination records where the session goes (written once, by the
// session's goroutine; read under mu by the status query).
func (c *conn) setDestination(dst netip.AddrPort, ident string) {
	c.mu.Lock()
	c.dst, c.ident = dst, ident
	c.target = dst
	c.mu.Unlock()
}

// row is the session's line in the status table.
func (c *conn) row() ipc.SessionRow {
	c.mu.Lock()
	target, ident := c.target, c.ident
	c.mu.Unlock()
	return ipc.SessionRow{
		ID: c.id, State: state(c.state.Load()).wire(), Target: target, Ident: ident,
		Transaction: int(c.trns.Load()), Auth: int(c.authFlag.Load()),
		ClientRx: c.cliRx.Load(), ServerRx: c.srvRx.Load(),
	}
}

// kill ends the session now: its sockets are closed and what it waits
// for is cancelled. Its CLOSE line says by=killed.
func (c *conn) kill() {
	c.killed.Store(true)
	c.cancel()
}

// sessions is a worker's table of live sessions.
type sessions struct {
	mu sync.Mutex
	m  map[uint64]*conn
}

// newConn makes the conn of a session master handed over and enters it in
// the table. It is called on the link's goroutine, before the session's
// own starts, so that a status query that follows finds it.
func (w *worker) newConn(ns *ipc.NewSession) *conn {
	c := &conn{
		id:    ns.ID,
		cfg:   w.cfg.Load(),
		src:   ns.Client,
		local: ns.Local,
		start: time.Unix(0, ns.Accepted),
		by:    "error",
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	w.live.mu.Lock()
	if w.live.m == nil {
		w.live.m = make(map[uint64]*conn)
	}
	w.live.m[c.id] = c
	w.live.mu.Unlock()
	return c
}

// forget takes the session out of the table (before its SessionEnd goes).
func (w *worker) forget(c *conn) {
	w.live.mu.Lock()
	delete(w.live.m, c.id)
	w.live.mu.Unlock()
	c.cancel()
}

// rows answers master's MsgSessions.
func (w *worker) rows(q *ipc.SessionsQuery) *ipc.SessionList {
	want := map[uint64]bool{}
	for _, id := range q.IDs {
		want[id] = true
	}
	w.live.mu.Lock()
	defer w.live.mu.Unlock()
	l := &ipc.SessionList{Rows: make([]ipc.SessionRow, 0, len(w.live.m))}
	for id, c := range w.live.m {
		if len(want) == 0 || want[id] {
			l.Rows = append(l.Rows, c.row())
		}
	}
	return l
}

// killSession answers master's MsgKillSession.
func (w *worker) killSession(k *ipc.KillSession) *ipc.Ack {
	w.live.mu.Lock()
	c := w.live.m[k.ID]
	w.live.mu.Unlock()
	if c == nil {
		return &ipc.Ack{Err: "no such session"}
	}
	w.log.Noticef("[%d] killed on the administrator's request", c.id)
	c.kill()
	return &ipc.Ack{}
}

// commandState is the state a client's command puts the session in.
func commandState(verb string) state {
	switch verb {
	case "RSET":
		return stRset
	case "QUIT":
		return stQuit
	}
	return stHelo
}
