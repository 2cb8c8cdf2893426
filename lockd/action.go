package lockd

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/resource"
	"smtp-gated/ipc"
)

// action_script runs on lockd's own time: the request that made the lock
// is answered first. At most scriptSlots scripts run at once, at most
// scriptQueue more wait for a slot (beyond that a run is dropped and
// logged: an action flood must not become a process flood), and a script
// that runs longer than scriptTimeout is killed with its whole process
// group. Nothing a script does can hold up a session.
const (
	scriptSlots   = 4
	scriptQueue   = 64
	scriptTimeout = 30 * time.Second
	scriptOutput  = 1024 // bytes of a failing script's output that are logged
)

// scriptRunner runs action scripts.
type scriptRunner struct {
	log     *logx.Logger
	stdin   *os.File // /dev/null (nil: os/exec opens it)
	timeout time.Duration
	slots   chan struct{}
	waiting atomic.Int32
	noShell atomic.Bool    // logged: no /bin/sh to set the limits
	wg      sync.WaitGroup // running and waiting scripts, for tests
}

func newScriptRunner(log *logx.Logger) *scriptRunner {
	return &scriptRunner{log: log, timeout: scriptTimeout, slots: make(chan struct{}, scriptSlots)}
}

// start runs cfg's action_script with args and env, when a slot is
// free.
func (r *scriptRunner) start(cfg *config.Config, args, env []string, what string) {
	if cfg.ActionScript == "" {
		return
	}
	if r.waiting.Add(1) > scriptSlots+scriptQueue {
		r.waiting.Add(-1)
		r.log.Warningf("action_script for %s not run: %d scripts already running or waiting", what, scriptSlots+scriptQueue)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.waiting.Add(-1)
		r.slots <- struct{}{}
		defer func() { <-r.slots }()
		r.run(cfg, args, env, what)
	}()
}

// run runs the script and waits for it, within the timeout.
func (r *scriptRunner) run(cfg *config.Config, args, env []string, what string) {
	// resource.Script applies the limit_* options the daemon's own
	// processes leave out; the others are inherited from lockd.
	cmd := resource.Script(cfg, cfg.ActionScript, args...)
	if cmd.Path != cfg.ActionScript {
		// The limits are set by /bin/sh, which a chroot_path may not
		// have: the script runs all the same.
		if _, err := os.Stat(cmd.Path); err != nil {
			if !r.noShell.Swap(true) {
				r.log.Warningf("action_script: %v: limit_virt_size and limit_data_size are not applied to the script", err)
			}
			cmd = exec.Command(cfg.ActionScript, args...)
		}
	}
	cmd.Env = env
	cmd.Dir = r.workDir(cfg)
	if r.stdin != nil {
		cmd.Stdin = r.stdin // a chroot may have no /dev/null
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &capped{max: scriptOutput}
	cmd.Stdout, cmd.Stderr = out, out
	// A script that leaves a child holding its output must not hold
	// this goroutine once it has exited itself.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		r.log.Errf("action_script %s for %s: %v", cfg.ActionScript, what, err)
		return
	}
	var timedOut atomic.Bool
	pgid := cmd.Process.Pid
	timer := time.AfterFunc(r.timeout, func() {
		timedOut.Store(true)
		syscall.Kill(-pgid, syscall.SIGKILL)
	})
	err := cmd.Wait()
	timer.Stop()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case timedOut.Load():
		r.log.Errf("action_script %s for %s: still running after %v: killed (process group %d)%s", cfg.ActionScript, what, r.timeout, pgid, out.logged())
	case err != nil:
		r.log.Warningf("action_script %s for %s: %v after %v%s", cfg.ActionScript, what, err, took, out.logged())
	default:
		r.log.Infof("action_script %s for %s: done in %v", cfg.ActionScript, what, took)
	}
}

// workDir is the script's working directory: spool_path, as 1.4 had it
// (its own working directory), or "/" when spool_path is not a directory
// lockd can enter: a script that cannot start there still runs.
func (r *scriptRunner) workDir(cfg *config.Config) string {
	dir := cfg.SpoolPath
	if dir == "" {
		return "/"
	}
	if err := unix.Access(dir, unix.X_OK); err != nil {
		r.log.Warningf("action_script: spool_path %s: %v: the script runs in /", dir, err)
		return "/"
	}
	return dir
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) logged() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.b) == 0 {
		return ""
	}
	return "; output: " + strconv.Quote(strings.TrimSpace(string(c.b)))
}

// foundWords are the values of FOUND per lock_on event, 1.4's words;
// regex and ratelimit events are named further by foundWord.
var foundWords = map[string]string{
	"virus": "VIRUS", "spam": "SPAM", "maxhost": "MAX_HOST", "maxident": "MAX_IDENT",
	"dnsbl": "DNSBL", "spf": "SPF", "regex": "REGEX", "earlytalker": "EARLYTALK", "ratelimit": "RATELIMIT",
}

// foundWord is the value of FOUND for f, as 1.4 named its events: a regex
// event names the command refused (REGEX_HELO, REGEX_MAIL_FROM,
// REGEX_RCPT_TO), a rate-limit event its counter
// (RATELIMIT_MAILFROM_REJECTS, RATELIMIT_RCPTTO_REJECTS, and for the
// counters that did not lock in 1.4 RATELIMIT_CONNECTIONS, ...).
func foundWord(f *ipc.Found) string {
	switch f.Event {
	case "regex":
		switch strings.ToUpper(f.Command) {
		case "HELO", "EHLO":
			return "REGEX_HELO"
		case "MAIL":
			return "REGEX_MAIL_FROM"
		case "RCPT":
			return "REGEX_RCPT_TO"
		}
	case "ratelimit":
		// The worker's word is trusted only when it names a counter.
		if slices.Contains(counterNames[:], f.Detail) {
			return "RATELIMIT_" + strings.ToUpper(f.Detail)
		}
	}
	if w, ok := foundWords[f.Event]; ok {
		return w
	}
	return "UNKNOWN"
}

// scriptEvents are the events the manual runs the script for even when
// they do not lock.
var scriptEvents = map[string]bool{"virus": true, "spam": true, "maxhost": true, "maxident": true}

// lockCause is what a lock file made for f says, as 1.4 wrote it: the
// virus name for a virus, the value of FOUND for the others.
func lockCause(f *ipc.Found) string {
	if f.Event == "virus" && f.Detail != "" {
		return f.Detail
	}
	return foundWord(f)
}

// scriptArgs are the script's arguments, 1.4's: FOUND, SOURCE_IP, the
// ident or "-", TARGET_IP (empty when there is no target, as for
// MAX_HOST).
func scriptArgs(f *ipc.Found) []string {
	ident := "-"
	if f.Ident != "" {
		ident = envSafe(f.Ident)
	}
	return []string{foundWord(f), addrString(f.Client), ident, addrString(f.Target)}
}

// addrString is the address of ap, "" when there is none.
func addrString(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return ""
	}
	return ap.Addr().Unmap().String()
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// scriptEnv is the script's whole environment: PATH, and every variable
// of the manual, empty when not known (SPAM_SCORE 0.000, IDENT_COUNT 0,
// as in 1.4).
func scriptEnv(cfg *config.Config, f *ipc.Found, lockFile string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	ip := addrString
	port := func(ap netip.AddrPort) string {
		if !ap.IsValid() {
			return ""
		}
		return strconv.Itoa(int(ap.Port()))
	}
	num := func(n int64, known bool) string {
		if !known {
			return ""
		}
		return strconv.FormatInt(n, 10)
	}
	virus := ""
	if f.Event == "virus" {
		virus = f.Detail
	}
	identCount := 0
	if f.Ident != "" {
		identCount = f.IdentCount
	}
	start := time.Unix(f.Start, 0)
	vars := [][2]string{
		{"PATH", path},
		{"PROXY_NAME", cfg.ProxyHostName()},
		{"FOUND", foundWord(f)},
		{"VIRUS_NAME", virus},
		{"SPAM_SCORE", strconv.FormatFloat(f.SpamScore, 'f', 3, 64)},
		{"SOURCE_IP", ip(f.Client)},
		{"SOURCE_PORT", port(f.Client)},
		{"TARGET_IP", ip(f.Target)},
		{"TARGET_PORT", port(f.Target)},
		{"LOCAL_IP", ip(f.Local)},
		{"LOCAL_PORT", port(f.Local)},
		{"IDENT", f.Ident},
		{"IDENT_COUNT", strconv.Itoa(identCount)},
		{"HELO", f.Helo},
		{"MAIL_FROM", f.MailFrom},
		{"RCPTS_TOTAL", strconv.Itoa(f.Rcpts)},
		{"SIZE", strconv.FormatInt(f.Size, 10)},
		{"TRANSACTION", strconv.Itoa(f.Transaction)},
		{"AUTH", strconv.Itoa(f.Auth)},
		{"SPOOL_NAME", spoolName(cfg, f.Spool)},
		{"LOCK_FILE", lockFile},
		{"LOCK_DURATION", strconv.FormatInt(cfg.LockDuration, 10)},
		{"TIME", num(0, false)},
		{"UNIXTIME", num(f.Start, f.Start != 0)},
	}
	if f.Start != 0 {
		vars[len(vars)-2][1] = start.Format(time.ANSIC)
	}
	env := make([]string, 0, len(vars))
	for _, v := range vars {
		env = append(env, v[0]+"="+envSafe(v[1]))
	}
	return env
}

// spoolName is the spool file's path as the script sees it. A session
// worker names it as the host does; a script that runs in chroot_path (cfg
// has it only when lockd's root is chroot_path) sees it inside.
func spoolName(cfg *config.Config, path string) string {
	if cfg.ChrootPath == "" || path == "" {
		return path
	}
	rest, ok := strings.CutPrefix(path, filepath.Clean(cfg.ChrootPath)+"/")
	if !ok {
		return path
	}
	return "/" + rest
}

// envSafe escapes (logx.Escape) the bytes a client or a session worker
// could have put into HELO, MAIL FROM or a detail: a NUL would make the
// environment invalid, the others are no business of a shell script.
func envSafe(s string) string { return logx.Escape(s) }
