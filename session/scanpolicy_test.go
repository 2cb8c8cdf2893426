package session

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// What a message's verdict, the scanners configured and the spool make
// of it, as 1.4 decided: a session through the engine with fake peers,
// an MTA that says "Ok: queued" to a final dot it got, and the client's
// replies.

// oneMessage is a dialogue of one message of about size bytes.
func oneMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@m.test>\r\nDATA\r\nSubject: x\r\n\r\n")
	for b.Len() < size {
		b.WriteString("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n")
	}
	b.WriteString(".\r\nQUIT\r\n")
	return b.Bytes()
}

// unusableSpool is a spool_path where no file can be made.
func unusableSpool(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const delivered = "250 2.0.0 Ok: queued"

// unscanned lets the MTA model take a dot without a verdict.
var unscanned = []ipc.VerdictKind{""}

type scanCase struct {
	name     string
	config   func(*config.Config)
	verdict  *ipc.Verdict      // nil: no scan expected
	passes   []ipc.VerdictKind // verdict kinds the MTA model lets through besides clean
	noScan   bool              // no scanner process
	size     int
	spool    string // spool_path; "" a fresh directory
	want     string // in the client's replies
	notWant  string
	scans    int    // scans asked for, -1 not checked
	spam     int    // messages counted as spam
	found    string // the events reported to lockd, joined by ","
	spoolNow int    // spool files left after the session (spool_leave_on error by default)
}

func runScanCase(t *testing.T, tc scanCase) {
	t.Helper()
	dir := tc.spool
	if dir == "" {
		dir = t.TempDir()
	}
	var p *fakePeers
	var spam int
	fc := &fuzzCase{
		client:   oneMessage(max(tc.size, 100)),
		keepOpen: true,
		spoolDir: dir,
		config: func(cfg *config.Config) {
			cfg.ScanStream = config.ScanStreamNo
			if tc.config != nil {
				tc.config(cfg)
			}
		},
		peers: func(f *fakePeers) {
			p = f
			if tc.verdict != nil {
				f.full = []*ipc.Verdict{tc.verdict}
			}
			f.passes = map[ipc.VerdictKind]bool{}
			for _, k := range tc.passes {
				f.passes[k] = true
			}
			f.noScanner = tc.noScan
		},
		done: func(e *engine) { spam = e.c.spam },
	}
	v, got := runCase(t, fc, engineProxy)
	if len(v) > 0 {
		t.Errorf("violations: %q", v)
	}
	if !bytes.Contains(got, []byte(tc.want)) {
		t.Errorf("client got:\n%s\nwant %q", got, tc.want)
	}
	if tc.notWant != "" && bytes.Contains(got, []byte(tc.notWant)) {
		t.Errorf("client got:\n%s\nwant no %q", got, tc.notWant)
	}
	if tc.scans >= 0 && p.scans != tc.scans {
		t.Errorf("%d scans asked for, want %d", p.scans, tc.scans)
	}
	if got := strings.Join(p.found, ","); got != tc.found {
		t.Errorf("events reported %q, want %q", got, tc.found)
	}
	if spam != tc.spam {
		t.Errorf("%d messages counted spam, want %d", spam, tc.spam)
	}
	if tc.spool == "" {
		if left, _ := os.ReadDir(dir); len(left) != tc.spoolNow {
			t.Errorf("%d spool files left, want %d", len(left), tc.spoolNow)
		}
	}
}

func withSpam(cfg *config.Config) {
	cfg.AntispamType = config.AntispamSpamassassin
	cfg.AntispamPath = "127.0.0.1:783"
	cfg.LockOn = config.LockVirus | config.LockSpam
}

// Spam is refused only when lock_on includes spam; otherwise it is counted
// and delivered. The antispam scanner only advises: its failure never
// refuses a message; a failure of the virus scanner does (451), unless
// ignore_errors.
func TestVerdictPolicy(t *testing.T) {
	spam := &ipc.Verdict{Kind: ipc.VerdictSpam, Score: 12.5, Scanned: []string{"clamd", "spamd"}}
	noSpamLock := func(cfg *config.Config) { withSpam(cfg); cfg.LockOn = config.LockVirus }
	for _, tc := range []scanCase{
		{name: "spam, lock_on has spam", config: withSpam, verdict: spam,
			want: "\r\n550 ", notWant: delivered, scans: 1, spam: 1, found: "spam"},
		// Passed, but reported all the same: action_script runs when
		// spam is found.
		{name: "spam, lock_on lacks spam", config: noSpamLock, verdict: spam, passes: []ipc.VerdictKind{ipc.VerdictSpam},
			want: delivered, scans: 1, spam: 1, found: "spam"},
		{name: "spam, lock_on never", config: func(cfg *config.Config) { withSpam(cfg); cfg.LockOn = 0 },
			verdict: spam, passes: []ipc.VerdictKind{ipc.VerdictSpam}, want: delivered, scans: 1, spam: 1, found: "spam"},
		{name: "spamd fails, clamd clean", spoolNow: 1, config: withSpam,
			verdict: &ipc.Verdict{Kind: ipc.VerdictClean, Err: "spamd: no answer within 30s", Scanned: []string{"clamd", "spamd"}},
			want:    delivered, scans: 1},
		{name: "spamd only, fails", spoolNow: 1, config: func(cfg *config.Config) { withSpam(cfg); cfg.AntivirusType = config.AntivirusOff },
			verdict: &ipc.Verdict{Kind: ipc.VerdictError, Err: "spamd: connect: refused"}, passes: []ipc.VerdictKind{ipc.VerdictError},
			want: delivered, scans: 1},
		{name: "spamd only, no scanner process", spoolNow: 1, passes: unscanned, config: func(cfg *config.Config) { withSpam(cfg); cfg.AntivirusType = config.AntivirusOff },
			noScan: true, want: delivered, scans: 0},
		{name: "clamd fails", spoolNow: 1, config: withSpam,
			verdict: &ipc.Verdict{Kind: ipc.VerdictError, Err: "clamd: connect: refused"},
			want:    "\r\n451 ", notWant: delivered, scans: 1},
		{name: "clamd fails, ignore_errors", spoolNow: 1, config: func(cfg *config.Config) { withSpam(cfg); cfg.IgnoreErrors = true },
			verdict: &ipc.Verdict{Kind: ipc.VerdictError, Err: "clamd: connect: refused"}, passes: []ipc.VerdictKind{ipc.VerdictError},
			want: delivered, scans: 1},
		{name: "no scanner process, clamd", spoolNow: 1, noScan: true, want: "\r\n451 ", notWant: delivered, scans: 0},
		{name: "clamd fails, spam, lock_on lacks spam", config: noSpamLock,
			verdict: &ipc.Verdict{Kind: ipc.VerdictSpam, Score: 12.5, Err: "clamd: connect: refused"},
			want:    "\r\n451 ", notWant: delivered, scans: 1, spam: 1, found: "spam"},
		{name: "clamd fails, spam, lock_on has spam", config: withSpam,
			verdict: &ipc.Verdict{Kind: ipc.VerdictSpam, Score: 12.5, Err: "clamd: connect: refused"},
			want:    "\r\n550 ", notWant: delivered, scans: 1, spam: 1, found: "spam"},
	} {
		t.Run(tc.name, func(t *testing.T) { runScanCase(t, tc) })
	}
}

// A spool file exists only while a scanner will read it, and holds at
// most spool_max_size = max(scan_max_size, spam_max_size) bytes of the
// message; a longer message is not scanned. With no scanner, nothing is
// spooled (an unusable spool_path does not matter then).
func TestSpoolOnlyForScanners(t *testing.T) {
	clean := &ipc.Verdict{Kind: ipc.VerdictClean}
	off := func(cfg *config.Config) { cfg.AntivirusType = config.AntivirusOff }
	for _, tc := range []scanCase{
		{name: "no scanner", passes: unscanned, config: off, spool: unusableSpool(t), want: delivered, scans: 0},
		{name: "scan_max_size 0", passes: unscanned, config: func(cfg *config.Config) { cfg.ScanMaxSize = 0 },
			spool: unusableSpool(t), want: delivered, scans: 0},
		{name: "scan_max_size 0, spam_max_size 0", passes: unscanned, config: func(cfg *config.Config) { withSpam(cfg); cfg.ScanMaxSize, cfg.SpamMaxSize = 0, 0 },
			spool: unusableSpool(t), want: delivered, scans: 0},
		{name: "over scan_max_size", passes: unscanned, config: func(cfg *config.Config) { cfg.ScanMaxSize = 1000 },
			size: 5000, want: delivered, scans: 0},
		{name: "within scan_max_size", config: func(cfg *config.Config) { cfg.ScanMaxSize = 10000 },
			verdict: clean, size: 5000, want: delivered, scans: 1},
		{name: "over scan_max_size, within spam_max_size", config: func(cfg *config.Config) {
			withSpam(cfg)
			cfg.ScanMaxSize, cfg.SpamMaxSize = 1000, 10000
		}, verdict: clean, size: 5000, want: delivered, scans: 1},
		{name: "over both", passes: unscanned, config: func(cfg *config.Config) {
			withSpam(cfg)
			cfg.ScanMaxSize, cfg.SpamMaxSize = 1000, 2000
		}, size: 5000, want: delivered, scans: 0},
		{name: "scanner on, spool_path unusable", spool: unusableSpool(t),
			want: "\r\n451 ", notWant: delivered, scans: 0},
		{name: "scanner on, spool_path unusable, ignore_errors", passes: unscanned, config: func(cfg *config.Config) { cfg.IgnoreErrors = true },
			spool: unusableSpool(t), want: delivered, scans: 0},
	} {
		tc.spoolNow = 0
		t.Run(tc.name, func(t *testing.T) { runScanCase(t, tc) })
	}
}

// The spool file goes the moment the message passes spool_max_size: the
// file never holds more.
func TestSpoolDroppedOverMax(t *testing.T) {
	w := &worker{spool: prepareSpool(t.TempDir(), 0o600, -1, -1)}
	c := &conn{id: 1, cfg: config.Default()}
	sp, err := w.spool.create(c)
	if err != nil {
		t.Fatal(err)
	}
	sp.max = 100
	sp.write(bytes.Repeat([]byte("x"), 60))
	sp.write(bytes.Repeat([]byte("y"), 40)) // exactly spool_max_size: kept
	if _, err := os.Stat(sp.path()); err != nil || sp.dropped {
		t.Fatalf("at spool_max_size: %v, dropped %v; want the file", err, sp.dropped)
	}
	sp.write([]byte("z"))
	if _, err := os.Stat(sp.path()); !os.IsNotExist(err) || !sp.dropped || sp.err != nil {
		t.Fatalf("over spool_max_size: stat %v, dropped %v, err %v; want the file gone", err, sp.dropped, sp.err)
	}
	sp.write([]byte("more")) // nothing more happens
	if _, err := os.Stat(sp.path()); !os.IsNotExist(err) {
		t.Fatalf("the file came back: %v", err)
	}
}

// A spool file that cannot be written (EFBIG here; ENOSPC in the end to
// end test) is removed at once whatever spool_leave_on says; the message
// gets 451, or passes unscanned with ignore_errors.
func TestSpoolWriteFails(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = 4096
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("RLIMIT_FSIZE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
	keep := func(cfg *config.Config) {
		cfg.SpoolLeaveOn = config.SpoolLeaveAlways | config.SpoolLeaveError
	}
	for _, tc := range []scanCase{
		{name: "451", config: keep, size: 20000, want: "\r\n451 ", notWant: delivered, scans: 0},
		{name: "ignore_errors", passes: unscanned, config: func(cfg *config.Config) { keep(cfg); cfg.IgnoreErrors = true },
			size: 20000, want: delivered, scans: 0},
	} {
		tc.spoolNow = 0
		t.Run(tc.name, func(t *testing.T) { runScanCase(t, tc) })
	}
	// The same with a message that fits: spool_leave_on always keeps it,
	// so the file is there when nothing failed.
	syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
	t.Run("fits", func(t *testing.T) {
		runScanCase(t, scanCase{config: keep, verdict: &ipc.Verdict{Kind: ipc.VerdictClean}, size: 20000, want: delivered, scans: 1, spoolNow: 1})
	})
}

// SPF is not checked for a session that authenticated.
func TestSPFSkippedWhenAuthenticated(t *testing.T) {
	for _, tc := range []struct {
		name   string
		auth   bool
		asked  int
		want   string
		reject bool
	}{
		{"not authenticated", false, 1, "\r\n550 ", true},
		{"authenticated", true, 0, delivered, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *fakePeers
			client := oneMessage(100)
			if tc.auth {
				client = bytes.Replace(client, []byte("MAIL FROM"), []byte("AUTH PLAIN AHVzZXIAcGFzcw==\r\nMAIL FROM"), 1)
			}
			fc := &fuzzCase{client: client, keepOpen: true, authOK: true,
				config: func(cfg *config.Config) { cfg.Spf = config.SPFIncoming },
				peers:  func(f *fakePeers) { p = f; f.spf = "fail" }}
			v, got := runCase(t, fc, engineProxy)
			if len(v) > 0 {
				t.Errorf("violations: %q", v)
			}
			if !bytes.Contains(got, []byte(tc.want)) {
				t.Errorf("client got:\n%s\nwant %q", got, tc.want)
			}
			if p.spfAsked != tc.asked {
				t.Errorf("SPF asked %d times, want %d", p.spfAsked, tc.asked)
			}
			if tc.auth && !strings.Contains(string(got), "235 ") {
				t.Errorf("AUTH not accepted:\n%s", got)
			}
		})
	}
}
