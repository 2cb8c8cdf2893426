// Package child is the start of every child process: it reads the master's
// Hello from descriptor 3, parses the configuration it carries, opens the
// log, drops privileges and says Ready. Role packages take it from there.
package child

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"smtp-gated/internal/config"
	"smtp-gated/internal/confine"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/priv"
	"smtp-gated/internal/resource"
	"smtp-gated/ipc"
)

// LinkFD is the descriptor on which a child finds its link to master.
const LinkFD = 3

// Env is what a child knows once started.
type Env struct {
	Role   string
	Hello  *ipc.Hello
	Cfg    *config.Config
	Log    *logx.Logger
	Master *ipc.Conn

	hello *ipc.Msg
}

// Begin reads the Hello from master and opens the log. Signals meant for
// the daemon go to master only: a child stops when master closes its link.
func Begin(role string) (*Env, error) {
	// No new privileges and an empty capability bounding set, before
	// anything else (with cgo, done already by a constructor).
	restrictErr := priv.Restrict()
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	f := os.NewFile(LinkFD, "master")
	conn, err := ipc.NewConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s: link to master on fd %d: %w", role, LinkFD, err)
	}
	f.Close()
	m, err := conn.Recv()
	if err != nil {
		return nil, fmt.Errorf("%s: waiting for hello: %w", role, err)
	}
	h, ok := m.Payload.(*ipc.Hello)
	if !ok || m.Reply {
		return nil, fmt.Errorf("%s: %w: first message is %v, not HELLO", role, ipc.ErrMalformed, m.Type)
	}
	if h.Version != ipc.Version {
		return nil, fmt.Errorf("%s: master speaks catalogue version %d, this binary %d (was it upgraded? restart the daemon)", role, h.Version, ipc.Version)
	}
	if h.Role != role {
		return nil, fmt.Errorf("%s: master says this process is %q", role, h.Role)
	}
	cfg, err := config.Parse(strings.NewReader(h.Config), "(from master)")
	if err != nil {
		return nil, fmt.Errorf("%s: configuration from master: %w", role, err)
	}
	name := role
	if role == ipc.RoleSession {
		name = fmt.Sprintf("%s %d", role, h.Index)
	}
	log, lerr := logx.New("smtp-gated", cfg.LogFacility.Syslog(), int(cfg.LogLevel), true, h.Foreground)
	log = log.With(name + ": ")
	if lerr != nil && !h.Foreground {
		log.Warningf("%v; logging to standard error", lerr)
	}
	if restrictErr != nil {
		if os.Geteuid() == 0 {
			log.Warningf("restricting privileges: %v", restrictErr)
		} else {
			log.Debugf("restricting privileges: %v", restrictErr)
		}
	}
	// Inherited from master already; applied again from the
	// configuration the child was given. Master logged what does not apply.
	for _, note := range resource.Apply(cfg) {
		log.Debugf("%s", note.Msg)
	}
	return &Env{Role: role, Hello: h, Cfg: cfg, Log: log, Master: conn, hello: m}, nil
}

// Name is the process's name in log lines ("session 2", "lookup").
func (e *Env) Name() string {
	if e.Role == ipc.RoleSession {
		return fmt.Sprintf("%s %d", e.Role, e.Hello.Index)
	}
	return e.Role
}

// Drop gives up root: chroot into dir (when not empty), then set_user and
// set_group. Not being root is logged once and is not an error.
func (e *Env) Drop(dir string) error {
	id, err := priv.Resolve(e.Cfg.SetUser, e.Cfg.SetGroup)
	if err != nil && os.Geteuid() == 0 {
		return err
	}
	err = priv.Drop(id, dir)
	if errors.Is(err, priv.ErrNotRoot) {
		e.Log.Debugf("%v", err)
		return nil
	}
	if err != nil {
		return err
	}
	e.Log.Debugf("running as %s (uid %d, gid %d), root %q", id.User, id.UID, id.GID, dir)
	return nil
}

// Confine applies the BSDs' confinement of the role once its start-up is
// over (internal/confine): paths says where each path of the role's rule
// is, as the process sees it.
func (e *Env) Confine(paths map[string]string) error {
	what, err := confine.Apply(e.Role, e.Cfg, paths)
	if err != nil {
		return err
	}
	if what != "" {
		e.Log.Debugf("confined: %s", what)
	}
	return nil
}

// Refit ends the process, for master to start it again, when a reloaded
// configuration cannot be served under the confinement it is in.
func (e *Env) Refit(cfg *config.Config, paths map[string]string) {
	if err := confine.Fits(cfg, paths); err != nil {
		e.Log.Noticef("reload: %v: exiting, to be started again", err)
		os.Exit(0)
	}
}

// Ready answers master's Hello.
func (e *Env) Ready() error {
	return e.Master.Send(ipc.MsgReady, e.hello.ID, true, &ipc.Ready{Version: ipc.Version, Pid: os.Getpid()})
}

// Fatalf logs why the child cannot go on and ends it. Master restarts it.
func (e *Env) Fatalf(format string, a ...any) {
	e.Log.Critf(format, a...)
	os.Exit(2)
}

// LinkEnded handles the end of the link to master: end of file is master
// going away (normal: exit quietly); anything else is fatal.
func (e *Env) LinkEnded(err error) {
	if errors.Is(err, io.EOF) {
		e.Log.Debugf("master closed the link, exiting")
		os.Exit(0)
	}
	e.Fatalf("link to master: %v", err)
}

// Reconfigure parses a configuration pushed by master on reload and
// acknowledges it. It returns the new configuration, or nil when it does
// not parse (master validated it, so that is a version skew: logged).
func (e *Env) Reconfigure(p *ipc.Peer, m *ipc.Msg, v *ipc.Config) *config.Config {
	cfg, err := config.Parse(strings.NewReader(v.Config), "(from master)")
	ack := &ipc.Ack{}
	if err != nil {
		ack.Err = err.Error()
		e.Log.Errf("reload: %v", err)
	} else {
		e.Log.SetLevel(int(cfg.LogLevel))
	}
	if err := p.Reply(m, ipc.MsgAck, ack); err != nil {
		e.Fatalf("reply to master: %v", err)
	}
	if err != nil {
		return nil
	}
	return cfg
}

// ServeSessionLink takes the link to a session worker that master hands a
// service process (lookup, scanner, lockd) and serves it with h until it
// ends. ended, if not nil, runs when it has. A link that ends otherwise
// than by the worker going away is logged and dropped: master relinks the
// worker when it restarts. It returns the link, for what the service
// sends the worker on its own.
func (e *Env) ServeSessionLink(m *ipc.Msg, v *ipc.PeerLink, h ipc.Handler, ended func(*ipc.Peer)) *ipc.Peer {
	f := m.TakeFile(0)
	defer f.Close()
	if v.Role != ipc.RoleSession {
		e.Fatalf("unexpected %v for role %q from master", m.Type, v.Role)
	}
	conn, err := ipc.NewConn(f)
	if err != nil {
		e.Fatalf("link to session %d: %v", v.Index, err)
	}
	name := fmt.Sprintf("session %d", v.Index)
	sp := ipc.NewPeer(conn, name, h)
	go func() {
		err := sp.Run()
		sp.Close()
		if ended != nil {
			ended(sp)
		}
		if !errors.Is(err, io.EOF) {
			e.Log.Errf("link to %s: %v", name, err)
		}
	}()
	return sp
}
