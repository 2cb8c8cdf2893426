package lockd

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// The rate-limit file of one client, <ratelimit_path>/<client file name>,
// is text, one field per line, in this order and nothing else:
//
//	smtp-gated-ratelimit 1
//	client 192.0.2.1
//	generation 20261122000000
//	start 1795000000
//	connections 3 20
//	messages 1 0
//	recipients 4 100
//	bytes 12093 0
//	mailfrom_rejects 0 0
//	rcptto_rejects 1 0
//	auth_rejects 0 5
//	crc32 26ea5f14
//
// "client" repeats the file's name (as smtpgatectl writes it), "start" is
// when the current period began (unix seconds), each counter line is the
// count then the quota (0: none), numbers are decimal. The last line is
// the CRC-32 (IEEE) of every byte before it, in 8 lowercase hex digits,
// then a newline. A file that does not parse exactly so — truncated,
// damaged, a quota written by hand without fixing the checksum — is
// corrupt: lockd logs it and starts the client afresh.
//
// lockd writes a record to a temporary file in the same directory and
// renames it over the old one before it answers the request that changed
// it: a reader sees the old record or the new one, and a lockd killed at
// any moment loses nothing it acknowledged. (The file is not fsync'ed: a
// power failure can lose the last changes or leave a file that is then
// found corrupt.)

// counterNames are the counters in file order.
var counterNames = [nCounters]string{
	ipc.RateConnections, ipc.RateMessages, ipc.RateRecipients, ipc.RateBytes,
	ipc.RateMailfromRejects, ipc.RateRcpttoRejects, ipc.RateAuthRejects,
}

const nCounters = 7

const (
	fileMagic   = "smtp-gated-ratelimit 1"
	maxFileSize = 4096
	// ratePerm is the mode of rate-limit files: lockd's own, readable by
	// set_group.
	ratePerm = 0o640
)

// counterIndex returns the index of a counter name (ratelimit_sessions'
// "sessions" included), or -1.
func counterIndex(name string) int {
	if name == "sessions" {
		name = ipc.RateMessages
	}
	for i, n := range counterNames {
		if n == name {
			return i
		}
	}
	return -1
}

// record is one client's rate-limit state.
type record struct {
	Client     string
	Generation uint64
	Start      int64 // unix seconds
	Count      [nCounters]uint64
	Quota      [nCounters]uint64
}

// marshal writes the file's bytes.
func (r *record) marshal() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nclient %s\ngeneration %d\nstart %d\n", fileMagic, r.Client, r.Generation, r.Start)
	for i, n := range counterNames {
		fmt.Fprintf(&b, "%s %d %d\n", n, r.Count[i], r.Quota[i])
	}
	fmt.Fprintf(&b, "crc32 %08x\n", crc32.ChecksumIEEE(b.Bytes()))
	return b.Bytes()
}

// errCorrupt marks a file that is not a record.
var errCorrupt = errors.New("corrupt rate-limit file")

// parseRecord reads a file written by marshal, and nothing else.
func parseRecord(b []byte) (*record, error) {
	fail := func(format string, a ...any) (*record, error) {
		return nil, fmt.Errorf("%w: %s", errCorrupt, fmt.Sprintf(format, a...))
	}
	if len(b) > maxFileSize {
		return fail("%d bytes, more than %d", len(b), maxFileSize)
	}
	if len(b) == 0 {
		return fail("empty")
	}
	if b[len(b)-1] != '\n' {
		return fail("truncated: no newline at the end")
	}
	body := b[:len(b)-1]
	i := bytes.LastIndexByte(body, '\n')
	if i < 0 {
		return fail("no checksum line")
	}
	sum, ok := strings.CutPrefix(string(body[i+1:]), "crc32 ")
	if !ok {
		return fail("truncated: no checksum line")
	}
	want, err := strconv.ParseUint(sum, 16, 32)
	if err != nil || len(sum) != 8 || strings.ToLower(sum) != sum {
		return fail("checksum %q is not 8 hex digits", sum)
	}
	if got := crc32.ChecksumIEEE(b[:i+1]); got != uint32(want) {
		return fail("checksum %08x, the file says %s", got, sum)
	}
	lines := strings.Split(string(b[:i]), "\n")
	if len(lines) != 4+nCounters {
		return fail("%d lines before the checksum, want %d", len(lines), 4+nCounters)
	}
	if lines[0] != fileMagic {
		return fail("first line %q, want %q", clip(lines[0]), fileMagic)
	}
	r := &record{}
	field := func(line, key string, n int) ([]string, error) {
		f := strings.Split(line, " ")
		if len(f) != n+1 || f[0] != key {
			return nil, fmt.Errorf("%w: line %q, want %q and %d values", errCorrupt, clip(line), key, n)
		}
		return f[1:], nil
	}
	num := func(s string) (uint64, error) {
		if s == "" || s[0] == '+' || (len(s) > 1 && s[0] == '0') {
			return 0, fmt.Errorf("%w: number %q", errCorrupt, clip(s))
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: number %q", errCorrupt, clip(s))
		}
		return v, nil
	}
	f, err := field(lines[1], "client", 1)
	if err != nil {
		return nil, err
	}
	if _, ok := parseFileName(f[0]); !ok {
		return fail("client %q is not a client's name", clip(f[0]))
	}
	r.Client = f[0]
	if f, err = field(lines[2], "generation", 1); err != nil {
		return nil, err
	}
	if r.Generation, err = num(f[0]); err != nil {
		return nil, err
	}
	if f, err = field(lines[3], "start", 1); err != nil {
		return nil, err
	}
	start, err := num(f[0])
	if err != nil {
		return nil, err
	}
	if start > 1<<62 {
		return fail("start %d out of range", start)
	}
	r.Start = int64(start)
	for k, name := range counterNames {
		if f, err = field(lines[4+k], name, 2); err != nil {
			return nil, err
		}
		if r.Count[k], err = num(f[0]); err != nil {
			return nil, err
		}
		if r.Quota[k], err = num(f[1]); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// configQuotas are the quotas ratelimit_* give.
func configQuotas(cfg *config.Config) [nCounters]uint64 {
	return [nCounters]uint64{
		cfg.RatelimitConnections, cfg.RatelimitMessages, cfg.RatelimitRecipients, cfg.RatelimitBytes,
		cfg.RatelimitMailfromRejects, cfg.RatelimitRcpttoRejects, cfg.RatelimitAuthRejects,
	}
}

// newRecord is a client's first record: the configuration's quotas and
// generation, a period starting now.
func newRecord(cfg *config.Config, c client, now int64) *record {
	return &record{Client: c.fileName(), Generation: cfg.RatelimitGeneration, Start: now, Quota: configQuotas(cfg)}
}

// refresh brings r up to date: the configuration's quotas when its
// ratelimit_generation is higher than the record's, and the counts back
// to zero when ratelimit_period has passed since the period began (or the
// clock went back before it). It reports whether r changed.
func (r *record) refresh(cfg *config.Config, now int64) bool {
	changed := false
	if cfg.RatelimitGeneration > r.Generation {
		r.Generation, r.Quota = cfg.RatelimitGeneration, configQuotas(cfg)
		changed = true
	}
	if p := cfg.RatelimitExpiration; p > 0 && (now-r.Start >= p || now < r.Start) {
		r.Start, r.Count = now, [nCounters]uint64{}
		changed = true
	}
	return changed
}

// add changes counter i by n, staying within 0 and the largest count.
func (r *record) add(i int, n int64) {
	switch {
	case n >= 0:
		if r.Count[i]+uint64(n) < r.Count[i] {
			r.Count[i] = ^uint64(0)
		} else {
			r.Count[i] += uint64(n)
		}
	case uint64(-n) > r.Count[i]:
		r.Count[i] = 0
	default:
		r.Count[i] -= uint64(-n)
	}
}

// over reports whether counter i has reached its quota.
func (r *record) over(i int) bool { return r.Quota[i] > 0 && r.Count[i] >= r.Quota[i] }

// readRecord reads the record at path. A missing file is (nil, nil); a
// file that is not a record, or cannot be read as one, gives an error
// wrapping errCorrupt; other errors are the file system's.
func readRecord(path string) (*record, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%w: a symbolic link", errCorrupt)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file", errCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	return parseRecord(b)
}

// tmpPrefix starts the names of temporary files in lock_path and
// ratelimit_path; no client's file name starts with a dot.
const tmpPrefix = ".tmp-"

// writeAtomic replaces dir/name with data: a temporary file in dir, then
// a rename.
func writeAtomic(dir, name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(dir, tmpPrefix+name+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // CreateTemp makes 0600
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
