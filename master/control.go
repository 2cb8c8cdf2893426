package master

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

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
	m.ctl, m.ctlPath = l, path
	return nil
}

func (m *master) closeControl() {
	if m.ctl != nil {
		m.ctl.Close()
	}
}

// serveControl answers smtpgatectl until the socket is closed.
func (m *master) serveControl() {
	if m.ctl == nil {
		return
	}
	for {
		uc, err := m.ctl.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Errf("control socket: %v", err)
			}
			return
		}
		go m.control(uc)
	}
}

// control answers one request.
func (m *master) control(uc *net.UnixConn) {
	defer uc.Close()
	uc.SetDeadline(time.Now().Add(30 * time.Second))
	conn := ipc.FromUnixConn(uc)
	msg, err := conn.Recv()
	if err != nil {
		m.log.Warningf("control socket: %v", err)
		return
	}
	defer msg.Close()
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

// Exit codes of smtpgatectl, as the reply carries them (3, the daemon
// could not be reached, is smtpgatectl's own).
const (
	ctlOK       = 0
	ctlFailed   = 1
	ctlUsage    = 2
	ctlDenied   = 4
	ctlNotFound = 5
)

// commands lists the control commands: the words a request starts with,
// whether they need root (or the daemon's own user), and their usage.
var commands = []struct {
	name       string
	privileged bool
	usage      string
}{
	{"status", false, "status"},
	{"sessions", false, "sessions"},
	{"stats", false, "stats [--prometheus]"},
	{"dump", false, "dump"},
	{"show", true, "show config"},
	{"reload", true, "reload"},
	{"stop", true, "stop"},
	{"kill", true, "kill SESSION"},
	{"log", true, "log level LEVEL"},
	// Answered by lockd (limits.go); ratelimit set and reset are
	// privileged, ratelimit show is not.
	{"locks", false, "locks"},
	{"lock", true, "lock ADDR [DURATION] [CAUSE]"},
	{"unlock", true, "unlock ADDR"},
	{"ratelimit", false, "ratelimit show|set|reset ADDR ..."},
}

func usageText() string {
	var u []string
	for _, c := range commands {
		u = append(u, c.usage)
	}
	return "commands: " + strings.Join(u, ", ")
}

func reply(code int, format string, a ...any) *ipc.CtlReply {
	return &ipc.CtlReply{Code: code, Text: fmt.Sprintf(format, a...)}
}

// command runs one control command for a caller with uid.
func (m *master) command(req *ipc.CtlRequest, uid int) *ipc.CtlReply {
	if req.Version != ipc.Version {
		return reply(ctlFailed, "smtpgatectl speaks version %d, the daemon %d: use the smtpgatectl of the running daemon", req.Version, ipc.Version)
	}
	known := false
	for _, c := range commands {
		if c.name != req.Command {
			continue
		}
		known = true
		if c.privileged && uid != 0 && uid != os.Geteuid() {
			m.log.Warningf("control socket: %q refused for uid %d", req.Command, uid)
			return reply(ctlDenied, "%s: permission denied (needs root or the daemon's user)", req.Command)
		}
	}
	if !known {
		return reply(ctlUsage, "unknown command %q; %s", req.Command, usageText())
	}
	args := req.Args
	switch req.Command {
	case "status":
		if len(args) != 0 {
			break
		}
		return reply(ctlOK, "%s", m.status())
	case "sessions":
		if len(args) != 0 {
			break
		}
		var b strings.Builder
		s := m.snap(true)
		humanTable(&b, s)
		return reply(ctlOK, "%s", b.String())
	case "stats":
		var b strings.Builder
		switch {
		case len(args) == 0:
			statsText(&b, m.snap(false))
		case len(args) == 1 && args[0] == "--prometheus":
			prometheus(&b, m.snap(false))
		default:
			return reply(ctlUsage, "usage: stats [--prometheus]")
		}
		return reply(ctlOK, "%s", b.String())
	case "dump":
		if len(args) != 0 {
			break
		}
		text, err := m.writeState()
		if err != nil {
			return reply(ctlFailed, "dump failed: %v", err)
		}
		return reply(ctlOK, "%s", text)
	case "show":
		if len(args) != 1 || args[0] != "config" {
			return reply(ctlUsage, "usage: show config")
		}
		return reply(ctlOK, "%s", m.cfgText.Load().(string))
	case "kill":
		if len(args) != 1 {
			return reply(ctlUsage, "usage: kill SESSION (the id of the NEW and CLOSE lines)")
		}
		id, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return reply(ctlUsage, "kill: %q is not a session id", args[0])
		}
		m.log.Noticef("control socket: kill session %d (uid %d)", id, uid)
		switch err := m.killSession(id); {
		case errors.Is(err, errNoSession):
			return reply(ctlNotFound, "kill: no such session %d", id)
		case err != nil:
			return reply(ctlFailed, "kill %d failed: %v", id, err)
		}
		return reply(ctlOK, "session %d killed", id)
	case "log":
		if len(args) != 2 || args[0] != "level" {
			return reply(ctlUsage, "usage: log level LEVEL (debug, info, notice, warning, err, crit, alert, emerg)")
		}
		if err := m.mainLoop("loglevel", args[1]); err != nil {
			if errors.Is(err, errBadLevel) {
				return reply(ctlUsage, "log level: %v", err)
			}
			return reply(ctlFailed, "log level failed: %v", err)
		}
		return reply(ctlOK, "log level %s", args[1])
	case "locks", "lock", "unlock", "ratelimit":
		return m.lockdCommand(req, uid)
	case "reload", "stop":
		if len(args) != 0 {
			break
		}
		if err := m.mainLoop(req.Command, ""); err != nil {
			return reply(ctlFailed, "%s failed: %v", req.Command, err)
		}
		if req.Command == "stop" {
			return reply(ctlOK, "stopping")
		}
		return reply(ctlOK, "reloaded")
	}
	return reply(ctlUsage, "%s takes no arguments", req.Command)
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
	text := m.cfgText.Load().(string)
	m.mu.Lock()
	var peers []*proc
	for _, p := range m.allProcs() {
		if p.ready {
			peers = append(peers, p)
		}
	}
	m.mu.Unlock()
	var failed error
	for _, p := range peers {
		if err := m.push(p, text); err != nil {
			m.log.Errf("log level: %v: %v", p, err)
			failed = fmt.Errorf("%v: %w", p, err)
		}
	}
	return failed
}

// dumpState writes the statefile on SIGUSR1.
func (m *master) dumpState() {
	if _, err := m.writeState(); err != nil {
		m.log.Errf("status: %v", err)
		return
	}
	m.log.Noticef("status written to %s", m.cfg.Load().Statefile)
}

// status is the text of `smtpgatectl status`.
func (m *master) status() string {
	var b strings.Builder
	m.mu.Lock()
	defer m.mu.Unlock()
	fmt.Fprintf(&b, "smtp-gated %s, pid %d\n", version.Version, os.Getpid())
	fmt.Fprintf(&b, "Start time: %s\n", m.started.Format(time.RFC1123))
	fmt.Fprintf(&b, "Restart time: %s\n", m.reloaded.Format(time.RFC1123))
	fmt.Fprintf(&b, "Uptime: %v\n", time.Since(m.started).Round(time.Second))
	fmt.Fprintf(&b, "Children: %d/%d (current/max)\n", len(m.sessions), m.maxConnections)
	fmt.Fprintf(&b, "Requests: %d/%d/%d (total/direct/empty)\n", m.count.requests, m.count.direct, m.count.empty)
	fmt.Fprintf(&b, "Rejects: %d/%d/%d (host/max/other)\n", m.count.rejectHost, m.count.rejectMax, m.count.rejectOther)
	for _, p := range m.allProcs() {
		state := "ready"
		if !p.ready {
			state = "starting"
		}
		fmt.Fprintf(&b, "Process: %-10s pid %-7d %-8s sessions %d restarts %d\n", p.String(), p.pid, state, p.sessions, p.restarts)
	}
	return b.String()
}
