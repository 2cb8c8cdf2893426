// Package master is the master process of smtp-gated, the only one that
// keeps root. It opens what needs privileges, starts and supervises the
// children, accepts connections and admits them against the global limits,
// hands each to a session worker, and answers signals and smtpgatectl.
// It never parses SMTP.
package master

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
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
	"smtp-gated/ipc"
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

// session is master's record of one handed-off connection.
type session struct {
	worker *proc
	src    netip.AddrPort
	local  netip.AddrPort
	ident  string // as the worker told it (IdentQuery), once
	start  time.Time
	slot   int           // its row in the status file
	done   chan struct{} // closed when the session is forgotten
	// conn is master's copy of the client socket and ns the hand-off
	// message, until the worker says it took the session; nil after.
	conn *net.TCPConn
	ns   *ipc.NewSession
}

// counters are totals since start.
type counters struct {
	requests, direct, empty   uint64
	rejectHost, rejectMax     uint64
	rejectOther, lostSessions uint64
	// For the status file: the most sessions open at once; children
	// that died unexpectedly and those killed for breaking the rules,
	// with the time of the last; sessions in which an auth_require
	// refusal, an SPF or regex refusal, an early talker, a full
	// pipeline, a rate-limit refusal, an accepted and a failed
	// authentication happened.
	peak               int
	crashes, bugs      uint64
	crashLast, bugLast time.Time
	noAuth, spf, regex uint64
	earlytalk          uint64
	pipeline           uint64
	rateRefused        uint64
	authOK, authFail   uint64
}

type master struct {
	opts     Options
	log      *logx.Logger
	cfg      atomic.Pointer[config.Config]
	cfgText  atomic.Value // string: cfg in file syntax, for children
	started  time.Time
	reloaded time.Time
	emptyDir string

	// Fixed at start: [RESTART] options.
	maxConnections int
	workerCap      int // sessions a session worker can hold (nofile.go)
	listener       *net.TCPListener
	ctl            *net.UnixListener
	ctlFile        *os.File // ctl's descriptor, for serveControl
	ctlPath        string
	pidfile        string
	// natDev is /dev/pf or /dev/ipnat for the lookup process (modes pf,
	// ipfilter), opened before any child starts.
	natDev *os.File

	mu           sync.Mutex
	sessionProcs []*proc
	lookup       *proc
	scanner      *proc
	lockd        *proc
	sessions     map[uint64]*session
	perHost      map[netip.Addr]int
	nextID       uint64
	freeSlots    []int // slot numbers of sessions that ended (takeSlot)
	slotsUsed    int   // slot numbers given so far
	draining     bool
	stopped      bool
	drained      chan struct{}
	count        counters
	ops          opsState
	lim          limits // max_per_ident, max_load (limits.go)
	reg          registrar
	fullWarned   time.Time // when warnFull last logged

	quit     chan struct{} // closed when the daemon stops
	stopOnce sync.Once
	requests chan ctlOp // control operations that run on the main loop
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
	m := &master{
		opts:     opts,
		log:      log,
		started:  time.Now(),
		sessions: make(map[uint64]*session),
		perHost:  make(map[netip.Addr]int),
		quit:     make(chan struct{}),
		requests: make(chan ctlOp),
	}
	m.reloaded = m.started
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
	m.maxConnections = int(cfg.MaxConnections)
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
			m.emptyDir = d
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
	m.workerCap = m.raiseNofile(cfg)
	defer m.listener.Close()
	if cfg.Mode.Transparent() {
		if err := transparent(m.listener); err != nil {
			return err
		}
	}
	if m.natDev, err = natDevice(cfg.Mode); err != nil {
		return err
	}
	if m.natDev != nil {
		defer m.natDev.Close()
	}

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT)
	defer signal.Stop(sigs)

	if err := m.startChildren(cfg); err != nil {
		m.stop()
		m.stopChildren(5 * time.Second)
		return err
	}
	m.startRegistrar()
	go m.acceptLoop()
	go m.serveControl()

	log.Noticef("smtp-gated %s started: pid %d, listening on %v, mode %v, %d session workers",
		version.Version, os.Getpid(), m.listener.Addr(), cfg.Mode, len(m.sessionProcs))
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

// startChildren starts every child slot and waits for all to be ready.
func (m *master) startChildren(cfg *config.Config) error {
	n := int(cfg.SessionWorkers)
	if n == 0 {
		n = runtime.NumCPU()
	}
	m.mu.Lock()
	for i := range n {
		m.sessionProcs = append(m.sessionProcs, &proc{role: ipc.RoleSession, index: i})
	}
	m.lookup = &proc{role: ipc.RoleLookup}
	m.scanner = &proc{role: ipc.RoleScanner}
	m.lockd = &proc{role: ipc.RoleLockd}
	all := m.allProcs()
	m.mu.Unlock()
	errs := make(chan error, len(all))
	for _, p := range all {
		go func() { errs <- m.spawn(p) }()
	}
	var first error
	for range all {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// allProcs lists every child slot. Called with m.mu held.
func (m *master) allProcs() []*proc {
	all := append([]*proc{}, m.sessionProcs...)
	for _, p := range []*proc{m.lookup, m.scanner, m.lockd} {
		if p != nil {
			all = append(all, p)
		}
	}
	return all
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
	m.reloaded = time.Now()
	m.log.SetLevel(int(cfg.LogLevel))
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
			m.log.Errf("reload: %v: %v", p, err)
			failed = err
		}
	}
	m.log.Noticef("configuration reloaded from %s", m.opts.ConfigPath)
	return failed
}

// push sends a configuration to one child and waits for its Ack.
func (m *master) push(p *proc, text string) error {
	m.mu.Lock()
	peer := p.peer
	m.mu.Unlock()
	if peer == nil {
		return errors.New("not running")
	}
	ctx, cancel := contextTimeout(5 * time.Second)
	defer cancel()
	r, err := peer.Call(ctx, ipc.MsgConfig, &ipc.Config{Config: text}, ipc.MsgAck)
	if err != nil {
		return err
	}
	if a := r.Payload.(*ipc.Ack); a.Err != "" {
		return errors.New(a.Err)
	}
	return nil
}

// stopping reports whether the daemon no longer restarts children.
func (m *master) stopping() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stoppingLocked()
}

func (m *master) stoppingLocked() bool { return m.stopped }

func (m *master) stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.stopOnce.Do(func() { close(m.quit) })
}

// shutdown stops accepting, lets the sessions in flight finish for up to
// timeout_shutdown, then stops the children.
func (m *master) shutdown() error {
	notify(daemon.SdNotifyStopping)
	cfg := m.cfg.Load()
	m.mu.Lock()
	m.draining = true
	m.drained = make(chan struct{})
	if len(m.sessions) == 0 {
		close(m.drained)
	}
	n := len(m.sessions)
	drained := m.drained
	m.mu.Unlock()
	m.listener.Close()
	m.closeControl()
	bound := cfg.ShutdownTimeout()
	if n > 0 {
		m.log.Noticef("waiting up to %v for %d sessions to finish", bound, n)
	}
	select {
	case <-drained:
	case <-time.After(bound):
		m.mu.Lock()
		n = len(m.sessions)
		m.mu.Unlock()
		m.log.Warningf("%d sessions still open after %v: closing them", n, bound)
	}
	m.stop()
	m.stopChildren(5 * time.Second)
	m.log.Eventf(logx.Info, "%s", statsLine(m.snap(false)))
	m.log.Noticef("stopped")
	return nil
}

// notify tells systemd (when it started us) about a state change.
func notify(state string) {
	daemon.SdNotify(false, state)
}
