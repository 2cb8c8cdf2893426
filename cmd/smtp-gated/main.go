// Command smtp-gated is a transparent SMTP proxy that scans mail for
// viruses and spam on its way to the MTA. See smtp-gated(8).
//
// The same binary runs every process of the daemon: started by a user it
// is master (or a one-shot command such as -t); master executes it again
// with -child ROLE for each child process.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/rphd"
	"smtp-gated/internal/version"
	"smtp-gated/ipc"
	"smtp-gated/lockd"
	"smtp-gated/lookup"
	"smtp-gated/master"
	"smtp-gated/scanner"
	"smtp-gated/session"
)

const (
	// readyFDEnv tells a detached master which descriptor reports its
	// start to the waiting parent.
	readyFDEnv = "SMTPGATED_READY_FD"
)

func usage(w io.Writer) {
	fmt.Fprintf(w, `usage: smtp-gated [-f | -D level] config_file
       smtp-gated -K | -r | -s | -S config_file
       smtp-gated -t | -T [config_file]
       smtp-gated -C name config_file
       smtp-gated -L file
       smtp-gated -h | -v | -V

  -f        run in the foreground, logging to standard error too
  -D level  debug level (strtol base 0); non-zero runs in the foreground as -f
  -K        stop the running daemon (TERM)
  -r        reload the running daemon's configuration (HUP)
  -s        make the running daemon write its status file (as USR1), print it
  -S        print the status file's name
  -t        check the configuration and print it (without msg_* texts)
  -T        check the configuration and print it (with msg_* texts)
  -C name   print one option's value
  -L file   print a rate-limit file
  -v        print the version
  -V        print the version and what this build supports
  -h        print this help
`)
}

// Exit statuses, those of smtp-gated 1.4.
const (
	exitOK       = 0
	exitFail     = 1   // a command failed, the daemon could not start, a command line error
	exitConfig   = 2   // the configuration file cannot be read or is wrong
	exitTwoModes = 3   // more than one of -h -v -V -t -T -C -K -r -s -S -L
	exitHelp     = 10  // -h
	exitNoOption = 255 // -C of an option that does not exist
)

func main() {
	// A child gets from master exactly the descriptors master means it
	// to have (every other one of master's is close-on-exec).
	if len(os.Args) < 2 || os.Args[1] != "-child" {
		closeInherited()
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// cmdline is the command line: at most one mode flag, -f or -D, and the
// configuration file, in any order.
type cmdline struct {
	mode     string // "h", "v", "V", "t", "T", "C", "K", "r", "s", "S", "L"; "" runs the daemon
	arg      string // of -C and -L
	debug    int64  // -D; -f is 4 (1.4's "single" bit)
	debugSet bool   // -D was given
	path     string
	role     string // -child
}

// parseArgs reads the command line as 1.4 did: each argument is one flag
// or the configuration file, left to right.
func parseArgs(args []string) (*cmdline, int, error) {
	c := &cmdline{}
	setMode := func(m string) error {
		if c.mode != "" {
			return fmt.Errorf("only one of -h -v -V -t -T -C -K -r -s -S -L may be given (-%s and -%s)", c.mode, m)
		}
		c.mode = m
		return nil
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		needArg := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("option %s requires an argument", a)
			}
			i++
			return args[i], nil
		}
		switch a {
		case "-h", "--help":
			if err := setMode("h"); err != nil {
				return nil, exitTwoModes, err
			}
		case "-v", "-V", "-t", "-T", "-K", "-r", "-s", "-S":
			if err := setMode(a[1:]); err != nil {
				return nil, exitTwoModes, err
			}
		case "-C", "-L":
			v, err := needArg()
			if err != nil {
				return nil, exitFail, err
			}
			if err := setMode(a[1:]); err != nil {
				return nil, exitTwoModes, err
			}
			c.arg = v
		case "-f":
			c.debug |= 4
		case "-D":
			v, err := needArg()
			if err != nil {
				return nil, exitFail, err
			}
			n, err := strconv.ParseInt(v, 0, 64)
			if err != nil {
				return nil, exitFail, fmt.Errorf("-D %q: not a number", v)
			}
			c.debug, c.debugSet = n, true
		case "-child", "--child":
			v, err := needArg()
			if err != nil {
				return nil, exitFail, err
			}
			c.role = v
		default:
			if len(a) > 1 && a[0] == '-' {
				return nil, exitFail, fmt.Errorf("unknown option %s", a)
			}
			if c.path != "" {
				return nil, exitFail, fmt.Errorf("one configuration file only: %s and %s", c.path, a)
			}
			c.path = a
		}
	}
	return c, exitOK, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	c, rc, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		usage(stderr)
		return rc
	}
	if c.role != "" {
		return runChild(c.role, stderr)
	}
	if c.debugSet && c.debug != 0 {
		// As 1.4, but not for -f alone: under a service manager the
		// line would be a log line without a level.
		fmt.Fprintf(stderr, "Foreground level: 0x%02x\n", c.debug)
	}
	path := c.path
	switch c.mode {
	case "h":
		usage(stdout)
		return exitHelp
	case "v":
		printVersion(stdout, false)
		return exitOK
	case "V":
		printVersion(stdout, true)
		return exitOK
	case "L":
		if err := lockd.DumpRateFile(stdout, c.arg); err != nil {
			fmt.Fprintf(stderr, "smtp-gated: -L: %v\n", err)
			return exitFail
		}
		return exitOK
	case "t", "T":
		cfg := config.Default()
		if path != "" {
			var err error
			if cfg, err = config.Load(path); err != nil {
				fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
				return exitConfig
			}
			warn(stderr, cfg)
		}
		if err := cfg.Write(stdout, c.mode == "T"); err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return exitFail
		}
		return exitOK
	}
	if path == "" {
		fmt.Fprintf(stderr, "smtp-gated: a configuration file is required (there is no default path)\n")
		usage(stderr)
		return exitFail
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return exitConfig
	}
	// -K, -r and -s find the pidfile and the statefile as 1.4 did: under
	// chroot_path, when that is set. (-C shows the values as written.)
	host := cfg.OnHost()
	switch c.mode {
	case "C":
		v, err := cfg.Get(c.arg)
		if err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return exitNoOption
		}
		fmt.Fprintf(stdout, "%-30s %s\n", c.arg, v)
		return exitOK
	case "S":
		fmt.Fprintln(stdout, host.Statefile)
		return exitOK
	case "K":
		return signalDaemon(host, syscall.SIGTERM, stdout, stderr)
	case "r":
		return signalDaemon(host, syscall.SIGHUP, stdout, stderr)
	case "s":
		return printStatus(host, stdout, stderr)
	}
	return start(path, cfg, c.debug != 0, stderr)
}

// warn prints what the configuration file had that was taken with a
// warning.
func warn(w io.Writer, cfg *config.Config) {
	for _, s := range cfg.Warnings {
		fmt.Fprintf(w, "smtp-gated: warning: %s\n", s)
	}
}

// printVersion prints the version block in 1.4's layout ("  %-30s: %s"
// lines); with defines, the Defines: block of this build's features
// under 1.4's names, then Extra:.
func printVersion(w io.Writer, defines bool) {
	line := func(k, v string) { fmt.Fprintf(w, "  %-30s: %s\n", k, v) }
	fmt.Fprintln(w, "SMTP Transparent AV proxy")
	line("version", version.Version)
	line("helper protocol version", fmt.Sprintf("0x%x", rphd.Version))
	line("compile date", version.BuildDate())
	if !defines {
		return
	}
	fmt.Fprintln(w, "Defines:")
	for _, d := range version.Defines() {
		line(d.Name, d.Value)
	}
	fmt.Fprintln(w, "Extra:")
	line("go version", runtime.Version())
	line("system", runtime.GOOS+"/"+runtime.GOARCH)
	line("ipc catalogue version", strconv.Itoa(ipc.Version))
}

// runChild is the start of a child process executed by master.
func runChild(role string, stderr io.Writer) int {
	runners := map[string]func(*child.Env) error{
		ipc.RoleSession: session.Run,
		ipc.RoleLookup:  lookup.Run,
		ipc.RoleScanner: scanner.Run,
		ipc.RoleLockd:   lockd.Run,
	}
	fn, ok := runners[role]
	if !ok {
		fmt.Fprintf(stderr, "smtp-gated: -child %q: no such role\n", role)
		return 2
	}
	env, err := child.Begin(role)
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	if err := fn(env); err != nil {
		env.Log.Critf("%v", err)
		return 1
	}
	return 0
}

// signalDaemon sends sig to the master named in the pidfile.
func signalDaemon(cfg *config.Config, sig syscall.Signal, stdout, stderr io.Writer) int {
	pid, err := master.ReadPidfile(cfg.Pidfile)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "smtp-gated: no pidfile %s: the daemon is not running\n", cfg.Pidfile)
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	if err := syscall.Kill(pid, sig); err != nil {
		fmt.Fprintf(stderr, "smtp-gated: signal %v to pid %d (pidfile %s): %v\n", sig, pid, cfg.Pidfile, err)
		return 1
	}
	fmt.Fprintf(stdout, "sent %v to pid %d\n", sig, pid)
	return 0
}

// printStatus makes the daemon write its statefile, as USR1 does, and
// prints the file. Through the control socket the write is synchronous
// (`dump`); without one, USR1 is sent and the file watched until it is
// replaced.
func printStatus(cfg *config.Config, stdout, stderr io.Writer) int {
	if cfg.Statefile == "" {
		fmt.Fprintf(stderr, "smtp-gated: statefile is not set\n")
		return 1
	}
	// A control socket that is not set may not exist (the daemon runs
	// without one when it cannot make it): then USR1.
	path, set := cfg.ControlSocketPath()
	if _, err := os.Stat(path); path != "" && (set || err == nil) {
		r, err := ipc.Control(path, "dump", nil)
		if err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return 1
		}
		if r.Code != 0 {
			fmt.Fprint(stderr, r.Text)
			return 1
		}
		b, err := os.ReadFile(cfg.Statefile)
		if err != nil {
			// Not readable by this user: the daemon's answer is the
			// same text.
			b = []byte(r.Text)
		}
		stdout.Write(b)
		return 0
	}
	old, _ := os.Stat(cfg.Statefile)
	if rc := signalDaemon(cfg, syscall.SIGUSR1, io.Discard, stderr); rc != 0 {
		return rc
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		fi, err := os.Stat(cfg.Statefile)
		if err != nil || (old != nil && os.SameFile(old, fi)) {
			continue
		}
		b, err := os.ReadFile(cfg.Statefile)
		if err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return 1
		}
		stdout.Write(b)
		return 0
	}
	fmt.Fprintf(stderr, "smtp-gated: the daemon did not write %s within 10 s (see its log)\n", cfg.Statefile)
	return 1
}

// exe is the binary children are executed from: on Linux the running
// image itself, even if the file was replaced by an upgrade.
func exe() (string, error) {
	if _, err := os.Stat("/proc/self/exe"); err == nil {
		return "/proc/self/exe", nil
	}
	return os.Executable()
}

// start runs the daemon: in the foreground, or detached with the parent
// waiting until the daemon reports that it serves (or why it could not).
func start(path string, cfg *config.Config, foreground bool, stderr io.Writer) int {
	bin, err := exe()
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	var ready *os.File
	if v := os.Getenv(readyFDEnv); v != "" {
		fd, err := strconv.Atoi(v)
		if err == nil {
			syscall.CloseOnExec(fd)
			ready = os.NewFile(uintptr(fd), "ready")
		}
		os.Unsetenv(readyFDEnv)
	} else if !foreground {
		warn(stderr, cfg)
		return detach(bin, stderr)
	}
	log, lerr := logx.New("smtp-gated", cfg.LogFacility.Syslog(), int(cfg.LogLevel), true, foreground)
	log = log.With("master: ")
	if lerr != nil && !foreground {
		log.Warningf("%v; logging to standard error", lerr)
	}
	opts := master.Options{ConfigPath: path, Foreground: foreground, Exe: bin, Ready: ready}
	if err := master.Run(cfg, log, opts); err != nil {
		log.Critf("%v", err)
		if !foreground {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		}
		return 1
	}
	return 0
}

// detach starts the daemon in a new session and waits for its report.
func detach(bin string, stderr io.Writer) int {
	r, w, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	cmd := exec.Command(bin, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	w.Close()
	done := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		done <- strings.TrimSpace(line)
	}()
	select {
	case line := <-done:
		if line == "ok" {
			return 0
		}
		if line == "" {
			line = "the daemon exited during start-up (see the system log)"
		}
		fmt.Fprintf(stderr, "smtp-gated: %s\n", line)
		return 1
	case <-time.After(60 * time.Second):
		fmt.Fprintf(stderr, "smtp-gated: the daemon did not report its start within 60 s (pid %d)\n", cmd.Process.Pid)
		return 1
	}
}
