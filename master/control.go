package master

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/version"
	"smtp-gated/ipc"
)

// openControl creates the control socket for smtpgatectl. If another
// instance answers on it, this one refuses to start; a stale socket file
// is replaced.
func (m *master) openControl(path string) error {
	if path == "" {
		return nil
	}
	if c, err := net.DialTimeout("unixpacket", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another smtp-gated answers on it", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control socket: %w", err)
	}
	// Anyone may ask for status; privileged commands check the caller's
	// credentials. The socket is made with mode 0666 by bind itself (the
	// umask is set around it), not changed by path afterwards: a chmod by
	// path would follow a link put in its place.
	l, err := listenUnixMode(path, 0o111)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	// The accept loop reads a duplicate of the listening descriptor
	// through the poller (serveControl); the listener itself is kept to
	// remove the socket file when it is closed.
	var dup int
	var derr error
	rc, err := l.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	}
	if err == nil && derr == nil {
		if derr = unix.SetNonblock(dup, true); derr != nil {
			unix.Close(dup)
		}
	}
	if err != nil || derr != nil {
		l.Close()
		return fmt.Errorf("control socket: %w", errors.Join(err, derr))
	}
	m.ctl, m.ctlFile, m.ctlPath = l, os.NewFile(uintptr(dup), "control"), path
	return nil
}

func (m *master) closeControl() {
	if m.ctl != nil {
		m.ctlFile.Close()
		m.ctl.Close()
	}
}

// Bounds of the control socket, which any local user may connect to: a
// flood of idle connections must neither exhaust master's descriptors and
// memory nor lock out the administrator.
const (
	// ctlSlots control connections are served at once; ctlRootSlots
	// more for root only, so that root gets an answer while other users
	// hold the ordinary slots. Any other is refused at once.
	ctlSlots     = 16
	ctlRootSlots = 4
	// ctlCommandTimeout bounds the wait for the request, ctlTimeout the
	// whole connection.
	ctlCommandTimeout = 5 * time.Second
	ctlTimeout        = 30 * time.Second
	// ctlMaxRequest is the largest request read.
	ctlMaxRequest = 16 << 10
)

// serveControl answers smtpgatectl until the socket is closed. An accept
// error (EMFILE, ENFILE, ENOBUFS, ...) is retried with a back-off from
// 10 ms doubling to 1 s, as the SMTP listener's are: the control socket
// never stops answering while the daemon runs.
//
// Connections are accepted with accept4 on the listening descriptor, so
// that one refused costs four system calls (accept, credentials, write,
// close) and no poller registration: a flood is drained fast enough for
// root's command, queued behind it, to be answered in time.
func (m *master) serveControl() {
	if m.ctl == nil {
		return
	}
	rc, err := m.ctlFile.SyscallConn()
	if err != nil {
		m.log.Errf("control socket: %v", err)
		return
	}
	refusal, err := ipc.RefusalPacket("smtp-gated: too many control connections open; try again later")
	if err != nil {
		m.log.Errf("control socket: %v", err)
		return
	}
	slots := make(chan struct{}, ctlSlots)
	rootSlots := make(chan struct{}, ctlRootSlots)
	var delay time.Duration
	var refused refusals
	for {
		fd, err := acceptRaw(rc)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			delay = min(max(2*delay, 10*time.Millisecond), time.Second)
			m.log.Errf("control socket: accept: %v; retrying in %v", err, delay)
			select {
			case <-time.After(delay):
			case <-m.quit:
				return
			}
			continue
		}
		delay = 0
		var slot chan struct{}
		select {
		case slots <- struct{}{}:
			slot = slots
		default:
			if uid, err := fdPeerUID(fd); err == nil && uid == 0 {
				select {
				case rootSlots <- struct{}{}:
					slot = rootSlots
				default:
				}
			}
		}
		if slot == nil {
			// A new socket's buffer is empty: the write does not wait.
			unix.Write(fd, refusal)
			unix.Close(fd)
			if n := refused.add(); n > 0 {
				m.log.Warningf("control socket: %d connections refused: %d open already (%d more for root)", n, ctlSlots, ctlRootSlots)
			}
			continue
		}
		go func() {
			defer func() { <-slot }()
			c, err := m.ctlConn(fd)
			if err != nil {
				m.log.Errf("control socket: %v", err)
				return
			}
			m.control(c)
		}()
	}
}

// ctlConn makes a connection of the accepted descriptor fd, which it
// takes. Making it duplicates the descriptor: while master has none free,
// it tries again with a growing delay (for at most ctlCommandTimeout), so that
// the caller waits rather than loses its connection.
func (m *master) ctlConn(fd int) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), "control")
	defer f.Close()
	var delay time.Duration
	give := time.Now().Add(ctlCommandTimeout)
	for {
		c, err := net.FileConn(f)
		if err == nil {
			return c.(*net.UnixConn), nil
		}
		if !errors.Is(err, unix.EMFILE) && !errors.Is(err, unix.ENFILE) || time.Now().After(give) {
			return nil, err
		}
		if delay == 0 {
			m.log.Errf("control socket: %v; retrying", err)
		}
		delay = min(max(2*delay, 10*time.Millisecond), time.Second)
		select {
		case <-time.After(delay):
		case <-m.quit:
			return nil, err
		}
	}
}

// acceptRaw accepts one connection on the listener behind rc, waiting in
// the poller while there is none. It returns an error wrapping
// os.ErrClosed once the listener is closed.
func acceptRaw(rc syscall.RawConn) (int, error) {
	nfd := -1
	var aerr error
	err := rc.Read(func(fd uintptr) bool {
		for {
			nfd, aerr = accept4(int(fd))
			switch aerr {
			case unix.EINTR, unix.ECONNABORTED:
				continue
			case unix.EAGAIN:
				return false
			}
			return true
		}
	})
	if err != nil {
		// The poller fails only when the descriptor is closed (its
		// error, "use of closed file", is not os.ErrClosed itself).
		return -1, fmt.Errorf("%w: %v", os.ErrClosed, err)
	}
	if aerr != nil {
		return -1, os.NewSyscallError("accept4", aerr)
	}
	return nfd, nil
}

// refusals counts refused control connections for a log line at most
// every 10 seconds.
type refusals struct {
	n    int
	last time.Time
}

// add counts one refusal and returns the number to log now, 0 when the
// line waits.
func (r *refusals) add() int {
	r.n++
	if time.Since(r.last) < 10*time.Second {
		return 0
	}
	n := r.n
	r.n, r.last = 0, time.Now()
	return n
}

// control answers one request.
func (m *master) control(uc *net.UnixConn) {
	defer uc.Close()
	start := time.Now()
	uc.SetDeadline(start.Add(ctlTimeout))
	uc.SetReadDeadline(start.Add(ctlCommandTimeout))
	conn := ipc.FromUnixConn(uc)
	conn.LimitRecv(ctlMaxRequest)
	msg, err := conn.Recv()
	if err != nil {
		// A caller gone or silent is not worth a warning: a flood of
		// them would flood the log.
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			m.log.Debugf("control socket: no command: %v", err)
		} else {
			m.log.Warningf("control socket: %v", err)
		}
		return
	}
	defer msg.Close()
	uc.SetReadDeadline(start.Add(ctlTimeout))
	req, ok := msg.Payload.(*ipc.CtlRequest)
	if !ok || msg.Reply {
		m.log.Warningf("control socket: unexpected %v", msg.Type)
		return
	}
	uid, err := peerUID(uc)
	if err != nil {
		m.log.Warningf("control socket: peer credentials: %v", err)
		return
	}
	reply := m.command(req, uid)
	if err := conn.Send(ipc.MsgCtlReply, msg.ID, true, reply); err != nil {
		m.log.Debugf("control socket: %v", err)
	}
}

func reply(code ipc.CtlStatus, format string, a ...any) *ipc.CtlReply {
	return &ipc.CtlReply{Code: code, Text: fmt.Sprintf(format, a...)}
}

// ctlRun runs one control command with its arguments, for a caller with
// uid whose privileges were checked; a nil reply is a usage error.
type ctlRun func(m *master, args []string, uid int) *ipc.CtlReply

// ctlRuns holds what master does for each command of ipc.CtlCommands
// that lockd does not answer; TestCtlTable holds them to the list.
var ctlRuns = map[string]ctlRun{
	"status":   noArgs(func(m *master) *ipc.CtlReply { return reply(ipc.CtlOK, "%s", m.status()) }),
	"sessions": noArgs(ctlSessions),
	"stats":    ctlStats,
	"dump":     noArgs(ctlDump),
	"show": func(m *master, args []string, _ int) *ipc.CtlReply {
		if len(args) != 1 || args[0] != "config" {
			return nil
		}
		return reply(ipc.CtlOK, "%s", m.cfgText.Load().(string))
	},
	"kill":   ctlKill,
	"log":    ctlLog,
	"reload": noArgs(func(m *master) *ipc.CtlReply { return m.ctlMainLoop("reload", "reloaded") }),
	"stop":   noArgs(func(m *master) *ipc.CtlReply { return m.ctlMainLoop("stop", "stopping") }),
}

// noArgs makes the ctlRun of a command that takes no arguments.
func noArgs(f func(m *master) *ipc.CtlReply) ctlRun {
	return func(m *master, args []string, _ int) *ipc.CtlReply {
		if len(args) != 0 {
			return nil
		}
		return f(m)
	}
}

// command runs one control command for a caller with uid.
func (m *master) command(req *ipc.CtlRequest, uid int) *ipc.CtlReply {
	if req.Version != ipc.Version {
		return reply(ipc.CtlFailed, "smtpgatectl speaks version %d, the daemon %d: use the smtpgatectl of the running daemon", req.Version, ipc.Version)
	}
	c := ipc.LookupCtl(req.Command)
	if c == nil {
		var names []string
		for _, c := range ipc.CtlCommands {
			names = append(names, c.Name)
		}
		return reply(ipc.CtlUsage, "unknown command %q; commands: %s", req.Command, strings.Join(names, ", "))
	}
	if c.Privileged(req.Args) && uid != 0 && uid != os.Geteuid() {
		m.log.Warningf("control socket: %q refused for uid %d", req.Command, uid)
		return reply(ipc.CtlDenied, "%s: permission denied (needs root or the daemon's user)", req.Command)
	}
	if c.Lockd {
		return m.lockdCommand(req, uid)
	}
	if r := ctlRuns[c.Name](m, req.Args, uid); r != nil {
		return r
	}
	return reply(ipc.CtlUsage, "%s", c.Usage())
}

func ctlSessions(m *master) *ipc.CtlReply {
	var b strings.Builder
	sessionTable(&b, m.snap(true))
	return reply(ipc.CtlOK, "%s", b.String())
}

func ctlStats(m *master, args []string, _ int) *ipc.CtlReply {
	var b strings.Builder
	switch {
	case len(args) == 0:
		statsText(&b, m.snap(false))
	case len(args) == 1 && args[0] == "--prometheus":
		prometheus(&b, m.snap(false))
	default:
		return nil
	}
	return reply(ipc.CtlOK, "%s", b.String())
}

func ctlDump(m *master) *ipc.CtlReply {
	text, err := m.writeState()
	if err != nil {
		return reply(ipc.CtlFailed, "dump failed: %v", err)
	}
	return reply(ipc.CtlOK, "%s", text)
}

func ctlKill(m *master, args []string, uid int) *ipc.CtlReply {
	if len(args) != 1 {
		return nil
	}
	id, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		return reply(ipc.CtlUsage, "kill: %q is not a session id (the id= of the NEW and CLOSE lines)", args[0])
	}
	m.log.Noticef("control socket: kill session %d (uid %d)", id, uid)
	switch err := m.killSession(id); {
	case errors.Is(err, errNoSession):
		return reply(ipc.CtlNotFound, "kill: no such session %d", id)
	case err != nil:
		return reply(ipc.CtlFailed, "kill %d failed: %v", id, err)
	}
	return reply(ipc.CtlOK, "session %d killed", id)
}

func ctlLog(m *master, args []string, _ int) *ipc.CtlReply {
	if len(args) != 2 || args[0] != "level" {
		return reply(ipc.CtlUsage, "usage: log level LEVEL (debug, info, notice, warning, err, crit, alert, emerg)")
	}
	if err := m.mainLoop("loglevel", args[1]); err != nil {
		if errors.Is(err, errBadLevel) {
			return reply(ipc.CtlUsage, "log level: %v", err)
		}
		return reply(ipc.CtlFailed, "log level failed: %v", err)
	}
	return reply(ipc.CtlOK, "log level %s", args[1])
}

// ctlMainLoop runs reload or stop on the main loop and answers done.
func (m *master) ctlMainLoop(op, done string) *ipc.CtlReply {
	if err := m.mainLoop(op, ""); err != nil {
		return reply(ipc.CtlFailed, "%s failed: %v", op, err)
	}
	return reply(ipc.CtlOK, "%s", done)
}

// mainLoop runs op on master's main loop, where reloads and stops happen
// one at a time, and returns its result.
func (m *master) mainLoop(op, arg string) error {
	o := ctlOp{op: op, arg: arg, done: make(chan error, 1)}
	select {
	case m.requests <- o:
	case <-m.quit:
		return errors.New("the daemon is stopping")
	}
	return <-o.done
}

var errBadLevel = errors.New("bad level")

// setLogLevel changes log_level at run time, in master and every child:
// the running configuration with the new level is pushed as a reload
// would push it (children apply log_level from every configuration they
// get). A reload sets the level of the file again.
func (m *master) setLogLevel(level string) error {
	cfg, err := config.Parse(strings.NewReader(m.cfgText.Load().(string)+"\nlog_level "+level+"\n"), "(smtpgatectl)")
	if err != nil || strings.ContainsAny(level, " \t#;") {
		return fmt.Errorf("%w %q", errBadLevel, level)
	}
	if err := m.setConfig(cfg); err != nil {
		return err
	}
	m.log.SetLevel(int(cfg.LogLevel))
	m.log.Noticef("log level set to %v", cfg.LogLevel)
	if p, err := m.sup.pushAll(m.cfgText.Load().(string), "log level"); err != nil {
		return fmt.Errorf("%v: %w", p, err)
	}
	return nil
}

// dumpState writes the statefile on SIGUSR1.
func (m *master) dumpState() {
	if _, err := m.writeState(); err != nil {
		m.log.Errf("status: %v", err)
		return
	}
	cfg := m.cfg.Load()
	m.log.Noticef("status written to %s", cfg.HostPath(cfg.Statefile))
}

// status is the text of `smtpgatectl status`.
func (m *master) status() string {
	var b strings.Builder
	fmt.Fprintf(&b, "smtp-gated %s, pid %d\n", version.Version, os.Getpid())
	fmt.Fprintf(&b, "Start time: %s\n", m.started.Format(time.RFC1123))
	fmt.Fprintf(&b, "Restart time: %s\n", time.Unix(0, m.reloaded.Load()).Format(time.RFC1123))
	fmt.Fprintf(&b, "Uptime: %v\n", time.Since(m.started).Round(time.Second))
	sessions := m.adm.status(&b)
	m.sup.status(&b, sessions)
	return b.String()
}

// status writes admission's lines of `smtpgatectl status` and returns
// the number of sessions of each worker slot.
func (a *admission) status(b *strings.Builder) map[*proc]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	fmt.Fprintf(b, "Children: %d/%d (current/max)\n", len(a.sessions), a.maxConnections)
	fmt.Fprintf(b, "Requests: %d/%d/%d (total/direct/empty)\n", a.count.requests, a.count.direct, a.count.empty)
	fmt.Fprintf(b, "Rejects: %d/%d/%d (host/max/other)\n", a.count.rejectHost, a.count.rejectMax, a.count.rejectOther)
	sessions := make(map[*proc]int, len(a.workers))
	for _, p := range a.workers {
		sessions[p] = p.sessions
	}
	return sessions
}

// status writes a line of `smtpgatectl status` per child slot, with the
// sessions admission counts for each.
func (s *supervisor) status(b *strings.Builder, sessions map[*proc]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, p := range s.allProcs() {
		state := "ready"
		switch {
		case !p.ready:
			state = "starting"
		case p.role == ipc.RoleSession && p.late(now):
			state = "late" // no new sessions until it answers
		}
		fmt.Fprintf(b, "Process: %-10s pid %-7d %-8s sessions %d restarts %d\n", p.String(), p.pid, state, sessions[p], p.restarts)
	}
}
