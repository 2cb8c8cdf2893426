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
	"flag"
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
	fmt.Fprintf(w, `usage: smtp-gated [-f] config_file
       smtp-gated -K | -r | -s | -S config_file
       smtp-gated -t | -T [config_file]
       smtp-gated -C name config_file
       smtp-gated -h | -v | -V

  -f        run in the foreground, logging to standard error too
  -K        stop the running daemon (TERM)
  -r        reload the running daemon's configuration (HUP)
  -s        make the running daemon write its status file (as USR1), print it
  -S        print the status file's name
  -t        check the configuration and print it (without msg_* texts)
  -T        check the configuration and print it (with msg_* texts)
  -C name   print one option's value
  -v        print the version
  -V        print the version and what this build supports
  -h        print this help
`)
}

func main() {
	// A child gets from master exactly the descriptors master means it
	// to have (every other one of master's is close-on-exec).
	if len(os.Args) < 2 || os.Args[1] != "-child" {
		closeInherited()
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("smtp-gated", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		fg     = fs.Bool("f", false, "")
		help   = fs.Bool("h", false, "")
		kill   = fs.Bool("K", false, "")
		status = fs.Bool("s", false, "")
		sname  = fs.Bool("S", false, "")
		reload = fs.Bool("r", false, "")
		dump   = fs.Bool("t", false, "")
		dumpT  = fs.Bool("T", false, "")
		ver    = fs.Bool("v", false, "")
		verV   = fs.Bool("V", false, "")
		one    = fs.String("C", "", "")
		role   = fs.String("child", "", "")
	)
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		usage(stderr)
		return 2
	}
	if *role != "" {
		return runChild(*role, stderr)
	}
	path := fs.Arg(0)
	if fs.NArg() > 1 {
		fmt.Fprintf(stderr, "smtp-gated: one configuration file, not %d arguments\n", fs.NArg())
		usage(stderr)
		return 2
	}
	switch {
	case *help:
		usage(stdout)
		return 0
	case *ver:
		fmt.Fprintf(stdout, "smtp-gated %s\n", version.Version)
		return 0
	case *verV:
		printVersion(stdout)
		return 0
	case *dump || *dumpT:
		cfg := config.Default()
		if path != "" {
			var err error
			if cfg, err = config.Load(path); err != nil {
				fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
				return 1
			}
		}
		if err := cfg.Write(stdout, *dumpT); err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return 1
		}
		return 0
	}
	if path == "" {
		fmt.Fprintf(stderr, "smtp-gated: a configuration file is required (there is no default path)\n")
		usage(stderr)
		return 2
	}
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
		return 1
	}
	switch {
	case *one != "":
		v, err := cfg.Get(*one)
		if err != nil {
			fmt.Fprintf(stderr, "smtp-gated: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, v)
		return 0
	case *sname:
		fmt.Fprintln(stdout, cfg.Statefile)
		return 0
	case *kill:
		return signalDaemon(cfg, syscall.SIGTERM, stdout, stderr)
	case *reload:
		return signalDaemon(cfg, syscall.SIGHUP, stdout, stderr)
	case *status:
		return printStatus(cfg, stdout, stderr)
	}
	return start(path, cfg, *fg, stderr)
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "smtp-gated %s (%s, %s/%s)\n", version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	var modes []string
	for _, m := range version.Modes() {
		modes = append(modes, m.String())
	}
	fmt.Fprintf(w, "USE_NAT: %s\n", strings.Join(modes, " "))
	fmt.Fprintf(w, "IPC catalogue version: %d\n", ipc.Version)
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
	if cfg.ControlSocket != "" {
		r, err := ipc.Control(cfg.ControlSocket, "dump", nil)
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
