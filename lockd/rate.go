package lockd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// loadRecord reads the rate-limit record of c and brings it up to date
// (refresh). A client without a file, or whose file is corrupt (logged),
// gets a new record. changed says the record must be written.
func (s *server) loadRecord(cfg *config.Config, c client, now time.Time) (r *record, changed bool, err error) {
	path := filepath.Join(cfg.RatelimitPath, c.fileName())
	r, err = readRecord(path)
	switch {
	case errors.Is(err, errCorrupt):
		s.log.Errf("rate-limit file %s: %v: replaced by a new record", path, err)
		r = nil
	case err != nil:
		return nil, false, fmt.Errorf("rate-limit file %s: %w", path, err)
	case r != nil && r.Client != c.fileName():
		s.log.Errf("rate-limit file %s: %v: it is about %q: replaced by a new record", path, errCorrupt, r.Client)
		r = nil
	}
	if r == nil {
		return newRecord(cfg, c, now.Unix()), true, nil
	}
	return r, r.refresh(cfg, now.Unix()), nil
}

// storeRecord writes r.
func (s *server) storeRecord(cfg *config.Config, r *record) error {
	if err := writeAtomic(cfg.RatelimitPath, r.Client, r.marshal(), ratePerm); err != nil {
		return fmt.Errorf("rate-limit file %s: %w", filepath.Join(cfg.RatelimitPath, r.Client), err)
	}
	return nil
}

// counters turns names into indexes, refusing unknown ones.
func counters(names []string) ([]int, error) {
	var out []int
	for _, n := range names {
		i := counterIndex(n)
		if i < 0 {
			return nil, fmt.Errorf("unknown rate-limit counter %q", n)
		}
		out = append(out, i)
	}
	return out, nil
}

// rate does the rate-limit part of a Policy request (see ipc.Policy):
// the deltas, then the checks, then the counts taken. It returns the
// counter over its quota, if any. The record is written before the
// answer goes. Called with the client's key locked.
func (s *server) rate(cfg *config.Config, c client, q *ipc.Policy, now time.Time) (over string, err error) {
	take, err := counters(q.Take)
	if err != nil {
		return "", err
	}
	check, err := counters(q.Check)
	if err != nil {
		return "", err
	}
	for _, d := range q.Add {
		if counterIndex(d.Name) < 0 {
			return "", fmt.Errorf("unknown rate-limit counter %q", d.Name)
		}
	}
	path := filepath.Join(cfg.RatelimitPath, c.fileName())
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		// A new file takes its place in the count first, so that
		// requests about new clients in parallel cannot pass the bound.
		if n := s.rateFiles.Add(1); s.maxRateFiles > 0 && n > s.maxRateFiles {
			s.rateFiles.Add(-1)
			// No file beyond the bound: a client this new is not
			// counted. Rate limits per address mean little against
			// a sender of that many addresses anyway.
			if last := s.rateFull.Load(); now.Unix()-last >= 60 && s.rateFull.CompareAndSwap(last, now.Unix()) {
				s.log.Warningf("ratelimit_path %s holds %d files, the most lockd makes: %v and other new clients are not counted",
					cfg.RatelimitPath, s.rateFiles.Load(), c)
			}
			return "", nil
		}
		defer func() {
			if !fileExists(path) { // not made after all
				s.rateFiles.Add(-1)
			}
		}()
	}
	r, changed, err := s.loadRecord(cfg, c, now)
	if err != nil {
		return "", err
	}
	for _, d := range q.Add {
		if d.N != 0 {
			r.add(counterIndex(d.Name), d.N)
			changed = true
		}
	}
	for _, i := range append(take, check...) {
		if r.over(i) {
			over = counterNames[i]
			break
		}
	}
	if over == "" {
		for _, i := range take {
			r.add(i, 1)
			changed = true
		}
	}
	if changed {
		if err := s.storeRecord(cfg, r); err != nil {
			return "", err
		}
	}
	if over != "" {
		s.log.Noticef("RATELIMIT %v: %s %d reached its quota %d", c, over, r.Count[counterIndex(over)], r.Quota[counterIndex(over)])
	}
	return over, nil
}

// sweepRates removes the records that say nothing a new record would not:
// their period is over, and their quotas are the configuration's (or
// would be replaced by them). Records with quotas of their own
// (`smtpgatectl ratelimit set`) stay. Temporary files a killed lockd left
// behind go too.
func (s *server) sweepRates(cfg *config.Config, now time.Time) {
	if cfg.RatelimitExpiration <= 0 {
		return
	}
	ents, err := os.ReadDir(cfg.RatelimitPath)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warningf("ratelimit_path %s: %v", cfg.RatelimitPath, err)
		}
		return
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tmpPrefix) {
			s.removeStaleTemp(cfg.RatelimitPath, name, now)
			continue
		}
		c, ok := parseFileName(name)
		if !ok {
			continue
		}
		unlock := s.keys.lock(c.addr)
		path := filepath.Join(cfg.RatelimitPath, name)
		r, err := readRecord(path)
		if err == nil && r != nil && now.Unix()-r.Start >= cfg.RatelimitExpiration &&
			(r.Generation < cfg.RatelimitGeneration || (r.Generation == cfg.RatelimitGeneration && r.Quota == configQuotas(cfg))) {
			os.Remove(path)
		}
		unlock()
	}
	s.countRateFiles(cfg)
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// countRateFiles counts the records of ratelimit_path, for the bound on
// their number.
func (s *server) countRateFiles(cfg *config.Config) {
	ents, err := os.ReadDir(cfg.RatelimitPath)
	if err != nil {
		return
	}
	n := int64(0)
	for _, e := range ents {
		if _, ok := parseFileName(e.Name()); ok {
			n++
		}
	}
	s.rateFiles.Store(n)
}
