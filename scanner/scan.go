package scanner

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/internal/logx"
	"smtp-gated/ipc"
)

// Names of the scans a Scan may skip (auth_skip), as the session sends
// them.
const (
	skipAntivir  = "antivir"
	skipAntispam = "antispam"
)

// antivirus is clamd or mksd.
type antivirus interface {
	name() string
	scan(ctx context.Context, sp *spool) (found bool, name string, err error)
}

// engine scans messages with one configuration.
type engine struct {
	cfg     *config.Config
	log     *logx.Logger
	tempDir func() (string, error)  // mksd's private directory
	load    func() (float64, error) // the 1-minute load average
	// stream finishes a message streamed to clamd while it arrived
	// (stream.go), instead of a new scan of the whole file.
	stream antivirus
}

// antivirus returns the configured virus scanner, nil when off.
func (e *engine) antivirus() antivirus {
	switch e.cfg.AntivirusType {
	case config.AntivirusClamd:
		if e.stream != nil {
			return e.stream
		}
		return &clamd{addr: e.cfg.AntivirusPath, timeout: e.cfg.ScannerTimeout()}
	case config.AntivirusMksd:
		return &mksd{addr: e.cfg.AntivirusPath, timeout: e.cfg.ScannerTimeout(),
			tempDir: e.tempDir, perm: os.FileMode(e.cfg.SpoolPerm) & os.ModePerm}
	}
	return nil
}

// antispam returns the configured spam scanner, nil when off.
func (e *engine) antispam() *spamd {
	if e.cfg.AntispamType == config.AntispamSpamassassin {
		return &spamd{addr: e.cfg.AntispamPath, timeout: e.cfg.SpamTimeout()}
	}
	return nil
}

// scan judges one message. The virus scan comes first: a virus ends it.
// Then the spam scan. A virus scanner that fails makes the verdict an
// error (spam, when the spam scan found it), with Err saying why; whether
// that passes the message (ignore_errors) is the session's business. The
// spam scanner only advises, as in 1.4: when it fails, the verdict is
// what the virus scan said, with Err saying why.
// Scanned lists the scanners that ran. One log line tells the outcome.
func (e *engine) scan(ctx context.Context, q *ipc.Scan, f *os.File) *ipc.Verdict {
	t0 := time.Now()
	cfg := e.cfg
	v := &ipc.Verdict{Kind: ipc.VerdictClean}
	var skipped, errs []string
	var size int64 = -1
	spamRan := false

	sp, err := openSpool(f, cfg.SpoolHeader)
	if err != nil {
		v.Kind, v.Err = ipc.VerdictError, err.Error()
		e.logScan(q, v, size, false, nil, time.Since(t0))
		return v
	}
	size = sp.msgSize()
	if q.Size > 0 && size < q.Size {
		// Scanning the part that reached the file and calling it clean
		// would let the rest through unscanned.
		v.Kind = ipc.VerdictError
		v.Err = fmt.Sprintf("spool: the file holds %d bytes of message, the session sent %d (not flushed?)", size, q.Size)
		e.logScan(q, v, size, false, nil, time.Since(t0))
		return v
	}

	if av := e.antivirus(); av != nil {
		switch {
		case slices.Contains(q.Skip, skipAntivir):
			skipped = append(skipped, av.name()+"(auth_skip)")
		case cfg.ScanMaxSize == 0:
			// As 1.4 and the manual: scan_max_size 0 turns it off.
			skipped = append(skipped, av.name()+"(scan_max_size=0)")
		case uint64(size) > cfg.ScanMaxSize:
			skipped = append(skipped, av.name()+"(scan_max_size)")
		default:
			v.Scanned = append(v.Scanned, av.name())
			found, name, err := av.scan(ctx, sp)
			switch {
			case err != nil:
				v.Kind = ipc.VerdictError
				errs = append(errs, av.name()+": "+err.Error())
			case found:
				if name == "" || strings.EqualFold(name, "unknown") {
					name = cfg.MsgUnknownVirus
				}
				v.Kind, v.Name = ipc.VerdictVirus, name
				e.logScan(q, v, size, false, skipped, time.Since(t0))
				return v
			}
		}
	}

	if as := e.antispam(); as != nil {
		load := 0.0
		var lerr error
		if cfg.SpamMaxLoad > 0 && e.load != nil {
			load, lerr = e.load()
		}
		switch {
		case slices.Contains(q.Skip, skipAntispam):
			skipped = append(skipped, as.name()+"(auth_skip)")
		case cfg.SpamMaxSize == 0:
			// The manual's FAQ: spam_max_size 0 turns antispam off.
			skipped = append(skipped, as.name()+"(spam_max_size=0)")
		case uint64(size) > cfg.SpamMaxSize:
			skipped = append(skipped, as.name()+"(spam_max_size)")
		case lerr == nil && cfg.SpamMaxLoad > 0 && load > cfg.SpamMaxLoad:
			skipped = append(skipped, fmt.Sprintf("%s(load %.2f>spam_max_load)", as.name(), load))
		default:
			if lerr != nil {
				e.log.Debugf("spam_max_load: %v; scanning anyway", lerr)
			}
			v.Scanned = append(v.Scanned, as.name())
			score, err := as.check(ctx, sp)
			if err != nil {
				errs = append(errs, as.name()+": "+err.Error())
				break
			}
			spamRan = true
			v.Score = score
			if score >= cfg.SpamThreshold {
				v.Kind = ipc.VerdictSpam
			}
		}
	}

	v.Err = strings.Join(errs, "; ")
	e.logScan(q, v, size, spamRan, skipped, time.Since(t0))
	return v
}

// logScan writes the scan's one log line:
//
//	scan session=17 trns=1 src=192.0.2.1:40000 size=1234 verdict=virus name="Eicar-Signature" scanners=clamd time=0.012s
func (e *engine) logScan(q *ipc.Scan, v *ipc.Verdict, size int64, spamRan bool, skipped []string, d time.Duration) {
	var b strings.Builder
	fmt.Fprintf(&b, "scan session=%d trns=%d", q.SessionID, q.Transaction)
	if q.Client.IsValid() {
		fmt.Fprintf(&b, " src=%s", q.Client)
	}
	fmt.Fprintf(&b, " size=%d verdict=%s", size, v.Kind)
	if v.Name != "" {
		fmt.Fprintf(&b, " name=%q", v.Name)
	}
	if spamRan {
		fmt.Fprintf(&b, " score=%.1f threshold=%.1f", v.Score, e.cfg.SpamThreshold)
	}
	scanners := "none"
	if len(v.Scanned) > 0 {
		scanners = strings.Join(v.Scanned, ",")
	}
	fmt.Fprintf(&b, " scanners=%s", scanners)
	if len(skipped) > 0 {
		fmt.Fprintf(&b, " skipped=%s", strings.Join(skipped, ","))
	}
	fmt.Fprintf(&b, " time=%.3fs", d.Seconds())
	if v.Err != "" {
		fmt.Fprintf(&b, " err=%q", v.Err)
	}
	// The session writes 1.4's SCAN:VIRUS or SPAM:FOUND line at notice.
	switch v.Kind {
	case ipc.VerdictError:
		e.log.Errf("%s", b.String())
	default:
		e.log.Infof("%s", b.String())
	}
}

// probe checks that the configured scanners answer (clamd PING, spamd
// PING), and logs the outcome. mksd has no such request.
func (e *engine) probe(ctx context.Context) {
	type pinger struct {
		name, addr string
		ping       func(context.Context) error
	}
	var ps []pinger
	if e.cfg.AntivirusType == config.AntivirusClamd {
		c := &clamd{addr: e.cfg.AntivirusPath, timeout: 5 * time.Second}
		ps = append(ps, pinger{c.name(), c.addr, c.ping})
	}
	if e.cfg.AntispamType == config.AntispamSpamassassin {
		s := &spamd{addr: e.cfg.AntispamPath, timeout: 5 * time.Second}
		ps = append(ps, pinger{s.name(), s.addr, s.ping})
	}
	for _, p := range ps {
		t0 := time.Now()
		if err := p.ping(ctx); err != nil {
			e.log.Warningf("%s at %s does not answer (scans will fail until it does): %v", p.name, p.addr, err)
			continue
		}
		e.log.Infof("%s at %s answers PING in %.3fs", p.name, p.addr, time.Since(t0).Seconds())
	}
}
