// Package lockd is the lockd process, the only writer of lock files
// (lock_path) and rate-limit files (ratelimit_path). Session workers ask
// it, over the links master hands it, whether a client is locked and
// whether it is within its rate limits (one MsgPolicy, counting as it
// checks), and tell it what they found (MsgFound): it makes the lock the
// lock_on option asks for and runs action_script. Master tells it of
// max_per_host refusals and forwards the smtpgatectl commands about locks
// and rate limits. Everything about one client address is done by one
// request at a time, and written before the answer goes: a lockd killed
// at any moment loses no lock and no count it acknowledged.
//
// Under chroot_path lockd changes its root to it, as every process of 1.4
// did: lock_path, ratelimit_path and action_script (with its interpreter)
// are paths inside it, and the script runs there. Otherwise lockd is not
// chrooted: action_script lives anywhere.
package lockd

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/internal/priv"
	"smtp-gated/ipc"
)

type server struct {
	env    *child.Env
	log    *logx.Logger
	cfg    atomic.Pointer[config.Config]
	uid    int // lockd's user: lock files of other users are an administrator's
	keys   keyLocks
	script *scriptRunner
	// gen is the generation page the workers read (gen.go), nil when
	// there is none; watch keeps it honest about lock_path.
	gen   *generation
	watch *lockWatch

	master       *ipc.Peer // nil in tests without a master
	sess         sessions  // the sessions master registered (trust.go)
	maxRateFiles int64
	rateFiles    atomic.Int64 // files in ratelimit_path, as counted
	rateFull     atomic.Int64 // unix time the bound was last logged

	// chrooted: lockd's root is chroot_path, and the configuration's
	// paths are used as written; otherwise as the host names them.
	chrooted bool
}

// Run serves until master closes the link.
func Run(env *child.Env) error {
	s := &server{env: env, log: env.Log, script: newScriptRunner(env.Log), maxRateFiles: defaultMaxRateFiles}
	// The directories are made while lockd is still root, for set_user.
	makeDirs(env.Cfg.OnHost(), env.Log)
	// The scripts' standard input, opened before any chroot.
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	s.script.stdin = devNull
	if s.gen, err = newGeneration(); err != nil {
		s.log.Debugf("%v: session workers will ask lockd for every session", err)
	}
	// Into chroot_path when it is set (and lockd is root); otherwise not
	// chrooted: action_script and the directories live anywhere.
	root := os.Geteuid() == 0
	if err := env.Drop(env.Cfg.ChrootPath); err != nil {
		return err
	}
	s.chrooted = root && env.Cfg.ChrootPath != ""
	cfg := s.view(env.Cfg)
	s.cfg.Store(cfg)
	s.uid = os.Geteuid()
	if err := env.Confine(confinePaths(cfg)); err != nil {
		return err
	}
	if err := env.Ready(); err != nil {
		return err
	}
	s.checkDirs(cfg)
	s.watch = newLockWatch(s.gen, s.log)
	s.watch.watch(cfg)
	if s.gen != nil {
		go s.beats()
	}
	go s.sweeper()
	master := ipc.NewPeer(env.Master, "master", s.fromMaster)
	s.master = master
	env.LinkEnded(master.Run())
	return nil
}

// view is cfg as lockd uses it: as written when lockd's root is
// chroot_path, otherwise with every path as the host names it.
func (s *server) view(cfg *config.Config) *config.Config {
	if s.chrooted {
		return cfg
	}
	return cfg.OnHost()
}

// confinePaths is where the paths of lockd's confinement are
// (internal/confine).
func confinePaths(cfg *config.Config) map[string]string {
	paths := map[string]string{"lock_path": cfg.LockPath, "ratelimit_path": cfg.RatelimitPath, "/dev/null": "/dev/null"}
	if cfg.ActionScript != "" {
		paths["action_script"] = cfg.ActionScript
		paths["/"] = "/" // the script's interpreter, wherever it is
	}
	return paths
}

// locking reports whether lock files are looked at: lock_duration 0
// turns locking off.

// rating reports whether rate limits are kept: ratelimit_period 0 turns
// them off.

// makeDirs creates lock_path and ratelimit_path when they are missing,
// owned by set_user when lockd is root. Existing directories are left as
// they are: they must let set_user write.
func makeDirs(cfg *config.Config, log *logx.Logger) {
	uid, gid := -1, -1
	if id, err := priv.Resolve(cfg.SetUser, cfg.SetGroup); err == nil {
		uid, gid = id.UID, id.GID
	}
	for _, dir := range []struct {
		path string
		used bool
	}{{cfg.LockPath, cfg.Locking()}, {cfg.RatelimitPath, cfg.Rating()}} {
		if !dir.used || dir.path == "" {
			continue
		}
		if _, err := os.Stat(dir.path); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		// Parents as missing system directories are made (0755): set_user
		// must pass through them to its own.
		if err := os.MkdirAll(filepath.Dir(dir.path), 0o755); err != nil {
			log.Errf("%s: %v", dir.path, err)
			continue
		}
		if err := os.Mkdir(dir.path, 0o750); err != nil {
			log.Errf("%s: %v", dir.path, err)
			continue
		}
		if os.Geteuid() == 0 && uid >= 0 {
			os.Chown(dir.path, uid, gid)
		}
	}
}

// checkDirs logs, once, the directories lockd cannot write in: the
// trouble shows at start, not at the first virus. It also removes the
// temporary files a killed lockd left behind (no other lockd writes
// there now).
func (s *server) checkDirs(cfg *config.Config) {
	if cfg.Locking() && unix.Access(cfg.LockPath, unix.W_OK|unix.X_OK) != nil {
		s.log.Errf("lock_path %s: not writable by this user (uid %d): clients cannot be locked", cfg.LockPath, s.uid)
	}
	if cfg.Rating() && unix.Access(cfg.RatelimitPath, unix.W_OK|unix.X_OK) != nil {
		s.log.Errf("ratelimit_path %s: not writable by this user (uid %d): sessions will be refused (4xx)", cfg.RatelimitPath, s.uid)
	}
	if cfg.Rating() {
		s.countRateFiles(cfg)
	}
	far := time.Now().Add(time.Hour)
	for _, dir := range []string{cfg.LockPath, cfg.RatelimitPath} {
		if ents, err := os.ReadDir(dir); err == nil {
			for _, e := range ents {
				if len(e.Name()) > len(tmpPrefix) && e.Name()[:len(tmpPrefix)] == tmpPrefix {
					s.removeStaleTemp(dir, e.Name(), far)
				}
			}
		}
	}
}

// sweepEvery is the time between sweeps: expired locks go within
// lock_duration (at most a minute) of their expiry.
func sweepEvery(cfg *config.Config) time.Duration {
	if cfg.LockDuration > 0 {
		return min(max(time.Duration(cfg.LockDuration)*time.Second, time.Second), time.Minute)
	}
	return time.Minute
}

// rateSweepEvery is the time between sweeps of ratelimit_path.
const rateSweepEvery = 10 * time.Minute

// sweeper removes expired locks and spent rate-limit records, for as
// long as the process lives.
func (s *server) sweeper() {
	var lastRates time.Time
	for {
		time.Sleep(sweepEvery(s.cfg.Load()))
		cfg, now := s.cfg.Load(), time.Now()
		s.watch.watch(cfg) // lock_path again, when it was lost
		if cfg.Locking() {
			s.sweepLocks(cfg, now)
		}
		if now.Sub(lastRates) >= rateSweepEvery {
			lastRates = now
			s.sweepRates(cfg, now)
		}
	}
}
