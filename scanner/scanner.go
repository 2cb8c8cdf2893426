// Package scanner is the scanner process, the broker between session
// workers and the content scanners: clamd (FILDES over a unix socket,
// INSTREAM over TCP), mksd (its line protocol over a unix socket) and
// spamd (SPAMC/1.2 CHECK). A session worker sends MsgScan with the spool
// file's descriptor and gets one MsgVerdict back: clean, virus NAME,
// spam SCORE, or error. The process holds no state between scans: every
// scan opens its own connections, so a scanner that was restarted is
// simply found again on the next scan. (A message streamed to clamd while
// it arrives, MsgScanStart, has its stream until its scan: stream.go.)
package scanner

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"smtp-gated/internal/child"
	"smtp-gated/internal/config"
	"smtp-gated/internal/loadavg"
	"smtp-gated/ipc"
)

// server is the scanner process's state.
type server struct {
	env     *child.Env
	cfg     atomic.Pointer[config.Config]
	streams streams // messages fed to clamd while they arrive (stream.go)

	// tmp is the private directory for mksd's copies of spool files,
	// made on first use (see tempDir).
	tmpMu sync.Mutex
	tmp   string
}

// Run serves until master closes the link.
func Run(env *child.Env) error {
	s := &server{env: env}
	// Not chrooted: clamd's, spamd's and mksd's sockets live anywhere in
	// the file system, and connecting to a unix socket needs its path.
	// After the drop a socket is reachable when its mode allows set_user
	// (clamd's LocalSocketMode, spamd's --socketmode); the spool files
	// need not be readable by path at all: they come as descriptors.
	// Under chroot_path the sockets' paths are inside it, as in 1.4:
	// the process uses them as the host names them (OnHost).
	cfg := env.Cfg.OnHost()
	s.cfg.Store(cfg)
	if err := env.Drop(""); err != nil {
		return err
	}
	if err := env.Confine(confinePaths(cfg)); err != nil {
		return err
	}
	if err := env.Ready(); err != nil {
		return err
	}
	go s.probe(cfg)
	master := ipc.NewPeer(env.Master, "master", s.fromMaster)
	err := master.Run()
	s.removeTemp()
	env.LinkEnded(err)
	return nil
}

// confinePaths is where the paths of the scanner's confinement are
// (internal/confine): the scanners' unix sockets, the directory of mksd's
// copies, and what the resolver reads for scanners named by host name.
func confinePaths(cfg *config.Config) map[string]string {
	paths := map[string]string{"TMPDIR": os.TempDir(), "/etc/hosts": "/etc/hosts", "/etc/resolv.conf": "/etc/resolv.conf"}
	for name, p := range map[string]string{"antivirus_path": cfg.AntivirusPath, "antispam_path": cfg.AntispamPath} {
		if strings.HasPrefix(p, "/") {
			paths[name] = p
		}
	}
	return paths
}

// engine returns a scan engine for the current configuration.
func (s *server) engine() *engine {
	return &engine{cfg: s.cfg.Load(), log: s.env.Log, tempDir: s.tempDir, load: loadavg.Get}
}

// tempDir returns the process's private directory for mksd, making it on
// first use. mksd is told a path, and the spool file is in general not
// readable by path from here (a chrooted session wrote it, maybe under
// another name space): the scanner copies the message into a file of its
// own. The directory is made after the privilege drop, so it belongs to
// set_user; mode 0711 lets mksd (often root, else a user the administrator
// puts in set_group, as the original's FAQ asks for spool_path) reach a
// file whose name it is told without letting anyone list the directory.
func (s *server) tempDir() (string, error) {
	s.tmpMu.Lock()
	defer s.tmpMu.Unlock()
	if s.tmp != "" {
		if _, err := os.Stat(s.tmp); err == nil {
			return s.tmp, nil
		}
	}
	dir, err := os.MkdirTemp("", "smtp-gated-scan-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		os.Remove(dir)
		return "", err
	}
	s.tmp = dir
	return dir, nil
}

// removeTemp removes the private directory, if one was made.
func (s *server) removeTemp() {
	s.tmpMu.Lock()
	defer s.tmpMu.Unlock()
	if s.tmp != "" {
		os.RemoveAll(s.tmp)
		s.tmp = ""
	}
}

// probe checks, once after start and after a reload that changed the
// scanners, that the configured scanners answer, and logs the result: a
// clamd socket that set_user may not open shows up here, not at the first
// message. It never blocks the process.
func (s *server) probe(cfg *config.Config) {
	e := &engine{cfg: cfg, log: s.env.Log}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.probe(ctx)
}
