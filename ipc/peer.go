package ipc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by Call when the link ends before the reply came.
var ErrClosed = errors.New("ipc: link closed")

// Handler receives every message that is not a reply to a Call. It owns
// the message's descriptors. It runs on the reading goroutine: a handler
// that blocks stops the link, so long work goes to a goroutine of its own.
type Handler func(p *Peer, m *Msg)

// Peer is a Conn with request/response correlation: Call sends a request
// with a fresh id and waits for the reply carrying that id, while Run
// delivers every other message to the handler.
type Peer struct {
	Name string // who is at the other end, for log lines
	conn *Conn
	h    Handler

	next    atomic.Uint32
	mu      sync.Mutex
	pending map[uint32]chan *Msg
	// abandoned holds ids of calls whose caller gave up; their late
	// replies are expected, and dropped.
	abandoned map[uint32]struct{}
	closed    bool
	// ended is set once the link is closed or its reader has stopped.
	ended atomic.Bool
}

// NewPeer wraps c. Name is used in errors ("lookup", "session 2", ...).
func NewPeer(c *Conn, name string, h Handler) *Peer {
	return &Peer{Name: name, conn: c, h: h, pending: make(map[uint32]chan *Msg),
		abandoned: make(map[uint32]struct{})}
}

// Conn is the underlying link.
func (p *Peer) Conn() *Conn { return p.conn }

// Run reads until the link ends, and returns why: io.EOF when the peer
// closed it, an error wrapping ErrMalformed for a bad packet or for a reply
// that nobody asked for. Pending calls fail with ErrClosed.
func (p *Peer) Run() error {
	defer p.failPending()
	for {
		m, err := p.conn.Recv()
		if err != nil {
			return err
		}
		if !m.Reply {
			p.h(p, m)
			continue
		}
		p.mu.Lock()
		ch, ok := p.pending[m.ID]
		delete(p.pending, m.ID)
		_, late := p.abandoned[m.ID]
		delete(p.abandoned, m.ID)
		if ok {
			// Delivered under the lock (ch has room for this one reply):
			// a Call that gives up now either finds its id still pending
			// or finds the reply in ch and closes it; delivered after the
			// unlock, the reply and its descriptors could land in a
			// channel nobody reads any more.
			ch <- m
		}
		p.mu.Unlock()
		if late {
			m.Close()
			continue
		}
		if !ok {
			m.Close()
			return fmt.Errorf("ipc: %w: unexpected reply %v id %d from %s", ErrMalformed, m.Type, m.ID, p.Name)
		}
	}
}

func (p *Peer) failPending() {
	p.ended.Store(true)
	p.mu.Lock()
	p.closed = true
	for id, ch := range p.pending {
		close(ch)
		delete(p.pending, id)
	}
	p.mu.Unlock()
}

// Send sends a message that expects no reply.
func (p *Peer) Send(t Type, v any, fds ...int) error {
	return p.conn.Send(t, 0, false, v, fds...)
}

// Reply answers req.
func (p *Peer) Reply(req *Msg, t Type, v any, fds ...int) error {
	return p.conn.Send(t, req.ID, true, v, fds...)
}

// Call sends a request and waits for its reply, the context's end, or the
// link's end. A reply of another type than want is an error wrapping
// ErrMalformed; the caller closes the reply's descriptors.
func (p *Peer) Call(ctx context.Context, t Type, v any, want Type, fds ...int) (*Msg, error) {
	id := p.next.Add(1)
	if id == 0 {
		id = p.next.Add(1)
	}
	ch := make(chan *Msg, 1)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	p.pending[id] = ch
	p.mu.Unlock()
	forget := func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}
	if err := p.conn.Send(t, id, false, v, fds...); err != nil {
		forget()
		return nil, err
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, ErrClosed
		}
		if m.Type != want {
			m.Close()
			return nil, fmt.Errorf("ipc: %w: %s answered %v with %v", ErrMalformed, p.Name, t, m.Type)
		}
		return m, nil
	case <-ctx.Done():
		p.mu.Lock()
		if _, ok := p.pending[id]; ok {
			delete(p.pending, id)
			p.abandoned[id] = struct{}{}
		}
		p.mu.Unlock()
		// The reply may have raced in before the id was abandoned.
		select {
		case m, ok := <-ch:
			if ok {
				m.Close()
			}
		default:
		}
		return nil, ctx.Err()
	}
}

// Close closes the link.
func (p *Peer) Close() error {
	p.ended.Store(true)
	return p.conn.Close()
}

// Ended reports whether the link was closed, or its reader stopped: no
// reply or message will come over it any more.
func (p *Peer) Ended() bool { return p.ended.Load() }
