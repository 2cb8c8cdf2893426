// Package master is the master process of smtp-gated, the only one that
// keeps root. It opens what needs privileges, starts and supervises the
// children, accepts connections and admits them against the global limits,
// hands each to a session worker, and answers signals and smtpgatectl.
// It never parses SMTP.
//
// Its state is in two halves, each with its own lock, which no code
// holds together: the supervisor (supervisor.go, with the hand-off
// machinery of each worker in handoff.go) owns the child processes, their
// start, restart with back-off, links and configuration pushes; admission
// (admission.go, limits.go) owns the sessions, the counts per host and
// per ident, the load and the counters. dispatch.go routes the children's
// messages to one or the other.
package master

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/resource"
	"smtp-gated/internal/version"
)

// readyEnv names the descriptor on which a detached master reports that it
// started (see cmd/smtp-gated).
const readyEnv = "SMTPGATED_READY_FD"

// Options are the master's start parameters from the command line.
type Options struct {
	ConfigPath string
	Foreground bool
	// Exe is the binary children are executed from.
	Exe string
	// Ready, when set, is told "ok" or the start error, then closed.
	Ready *os.File
}

// master holds what is fixed at start, and the two halves of the daemon's
// state, each under its own lock: the supervisor (supervisor.go: the
// child processes, their start, restart with back-off, configuration
// pushes) and admission (admission.go: the sessions, the counts per host
// and per ident, the load, the counters). No code holds both locks: see
// the lock order at the types.
type master struct {
	opts     Options
	log      *logx.Logger
	cfg      atomic.Pointer[config.Config]
	cfgText  atomic.Value // string: cfg in file syntax, for children
	started  time.Time
	reloaded atomic.Int64 // unix nanoseconds of the last reload, or the start

	// Fixed at start: [RESTART] options.
	listener *net.TCPListener
	ctl      *net.UnixListener
	ctlFile  *os.File // ctl's descriptor, for serveControl
	ctlPath  string
	pidfile  string

	sup *supervisor
	adm *admission
	reg registrar // tells lockd of sessions (trust.go)

	stateMu  sync.Mutex    // one statefile write at a time
	quit     chan struct{} // closed when the daemon stops
	stopOnce sync.Once
	requests chan ctlOp // control operations that run on the main loop
}

// newMaster makes a master whose supervisor and admission are wired to
// each other and to it; Run sets what comes from the configuration.
func newMaster(opts Options, log *logx.Logger) *master {
	m := &master{opts: opts, log: log, started: time.Now(),
		quit: make(chan struct{}), requests: make(chan ctlOp)}
	m.reloaded.Store(m.started.UnixNano())
	m.adm = newAdmission(log, &m.cfg, &m.reg)
	m.sup = &supervisor{log: log, exe: opts.Exe, foreground: opts.Foreground, started: m.started,
		cfgText: &m.cfgText, quit: m.quit, dispatch: m.fromChild, adm: m.adm}
	return m
}

// ctlOp is a reload, stop or log level change asked for through the
// control socket; the result goes back on done.
type ctlOp struct {
	op   string
	arg  string
	done chan error
}

// Run starts the daemon and serves until TERM, QUIT or `smtpgatectl
// stop`. cfg is the parsed configuration file.
func Run(cfg *config.Config, log *logx.Logger, opts Options) (err error) {
	m := newMaster(opts, log)
	defer func() {
		if opts.Ready != nil {
			if err != nil {
				fmt.Fprintf(opts.Ready, "%v\n", err)
			}
			opts.Ready.Close()
		}
	}()
	if !version.Supported(cfg.Mode) {
		return fmt.Errorf("mode %v is not supported by this build (see smtp-gated -V)", cfg.Mode)
	}
	if err := m.setConfig(cfg); err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		log.Warningf("%s", w)
	}
	m.adm.maxConnections = int(cfg.MaxConnections)
	if os.Geteuid() != 0 {
		log.Noticef("not started as root: children keep this user and are not chrooted")
	} else {
		if cfg.SetUser == "" {
			log.Warningf("set_user is not set: children run as %q", "nobody")
		}
		if cfg.ChrootPath == "" {
			d, err := emptyRoot(cfg.Pidfile)
			if err != nil {
				return err
			}
			m.sup.emptyDir = d
		}
	}

	// What needs root is opened first, before any child exists.
	if err := m.openControlDefault(cfg); err != nil {
		return err
	}
	defer m.closeControl()
	// Under chroot_path, as every path option, inside it (1.4's rule).
	if err := m.writePidfile(cfg.HostPath(cfg.Pidfile)); err != nil {
		return err
	}
	defer os.Remove(m.pidfile)
	if m.listener, err = activated(); err != nil {
		return err
	}
	if m.listener != nil {
		log.Noticef("socket activation: listening on %v as passed by systemd (bind_address and port not used)", m.listener.Addr())
	} else if m.listener, err = listen(cfg.BindAddress, cfg.Port, int(cfg.ConnectQueue)); err != nil {
		return err
	}
	// Limits and priority before the children exist: they inherit them.
	for _, note := range resource.Apply(cfg) {
		if note.Default {
			log.Infof("%s", note.Msg)
		} else {
			log.Warningf("%s", note.Msg)
		}
	}
	m.adm.workerCap = m.raiseNofile(cfg)
	defer m.listener.Close()
	if cfg.Mode.Transparent() {
		if err := transparent(m.listener); err != nil {
			return err
		}
	}
	if m.sup.natDev, err = natDevice(cfg.Mode); err != nil {
		return err
	}
	if m.sup.natDev != nil {
		defer m.sup.natDev.Close()
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT)
	defer signal.Stop(sigs)

	n := int(cfg.SessionWorkers)
	if n == 0 {
		n = runtime.NumCPU()
	}
	m.sup.makeSlots(n)
	m.adm.workers = m.sup.workers
	if err := m.sup.startAll(); err != nil {
		m.stop()
		m.sup.stopChildren(5 * time.Second)
		return err
	}
	m.reg.start(m.quit, m.sup.lockdPeer, log)
	go m.acceptLoop()
	go m.serveControl()

	log.Noticef("smtp-gated %s started: pid %d, listening on %v, mode %v, %d session workers",
		version.Version, os.Getpid(), m.listener.Addr(), cfg.Mode, len(m.sup.workers))
	notify(daemon.SdNotifyReady)
	watchdog, interval := watchdogTicks()
	if watchdog != nil {
		log.Debugf("systemd watchdog: %v, pinging every %v", interval, interval/2)
	}
	if opts.Ready != nil {
		fmt.Fprintf(opts.Ready, "ok\n")
		opts.Ready.Close()
		opts.Ready = nil
	}

	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				m.reload()
			case syscall.SIGUSR1:
				go m.dumpState()
			default:
				m.log.Noticef("%v: stopping", sig)
				return m.shutdown()
			}
		case <-watchdog:
			notify(daemon.SdNotifyWatchdog)
		case op := <-m.requests:
			switch op.op {
			case "reload":
				op.done <- m.reload()
			case "loglevel":
				op.done <- m.setLogLevel(op.arg)
			case "stop":
				op.done <- nil
				m.log.Noticef("stop requested through the control socket")
				return m.shutdown()
			}
		}
	}
}

// openControlDefault opens the control socket: control_socket when set,
// where failing stops the start; otherwise control.sock beside the
// pidfile, and when that cannot be made the daemon runs without one.
func (m *master) openControlDefault(cfg *config.Config) error {
	path, set := cfg.ControlSocketPath()
	err := m.openControl(path)
	if err == nil || set {
		return err
	}
	m.log.Warningf("%v; running without a control socket (smtpgatectl cannot reach this daemon; set control_socket to choose a place)", err)
	return nil
}

// setConfig makes cfg the running configuration.
func (m *master) setConfig(cfg *config.Config) error {
	var b bytes.Buffer
	if err := cfg.Write(&b, true); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	m.cfgText.Store(b.String())
	m.cfg.Store(cfg)
	return nil
}

// reload re-reads the configuration file. A file that does not parse is
// refused and the running configuration stays; a good one is pushed to
// every child. Sessions in flight keep the configuration they started
// with; [RESTART] options keep their running values until a restart.
func (m *master) reload() error {
	cfg, err := config.Load(m.opts.ConfigPath)
	if err == nil && !version.Supported(cfg.Mode) {
		err = fmt.Errorf("mode %v is not supported by this build", cfg.Mode)
	}
	if err != nil {
		m.log.Errf("reload refused, keeping the running configuration: %v", err)
		return err
	}
	for _, w := range cfg.Warnings {
		m.log.Warningf("reload: %s", w)
	}
	if names := config.RestartOnly(m.cfg.Load(), cfg); len(names) > 0 {
		m.log.Warningf("reload: %v need a restart to take effect", names)
	}
	notify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
	defer notify(daemon.SdNotifyReady)
	if err := m.setConfig(cfg); err != nil {
		m.log.Errf("reload: %v", err)
		return err
	}
	m.reloaded.Store(time.Now().UnixNano())
	m.log.SetLevel(int(cfg.LogLevel))
	_, failed := m.sup.pushAll(m.cfgText.Load().(string), "reload")
	m.log.Noticef("configuration reloaded from %s", m.opts.ConfigPath)
	return failed
}

// stop ends the daemon's main loop and the restarts of children.
func (m *master) stop() {
	m.stopOnce.Do(func() { close(m.quit) })
}

// shutdown stops accepting, lets the sessions in flight finish for up to
// timeout_shutdown, then stops the children.
func (m *master) shutdown() error {
	notify(daemon.SdNotifyStopping)
	cfg := m.cfg.Load()
	n, drained := m.adm.drain()
	m.listener.Close()
	m.closeControl()
	bound := cfg.ShutdownTimeout()
	if n > 0 {
		m.log.Noticef("waiting up to %v for %d sessions to finish", bound, n)
	}
	select {
	case <-drained:
	case <-time.After(bound):
		n = m.adm.open()
		m.log.Warningf("%d sessions still open after %v: closing them", n, bound)
	}
	m.stop()
	m.sup.stopChildren(5 * time.Second)
	m.log.Eventf(logx.Info, "%s", statsLine(m.snap(false)))
	m.log.Noticef("stopped")
	return nil
}

// notify tells systemd (when it started us) about a state change.
func notify(state string) {
	daemon.SdNotify(false, state)
}
