package config

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
)

// Error is one mistake in a configuration file. Its message reads
// "FILE:LINE: OPTION: MSG; accepted: ACCEPTED"; ":LINE" is left out when
// Line is 0 (a mistake of the file as a whole, such as a missing mode), and
// "; accepted: ..." when Accepted is empty.
type Error struct {
	File     string // the name given to Parse, the path given to Load
	Line     int    // 1-based line number; 0 when no single line is at fault
	Option   string // the option as written in the file
	Msg      string // what was wrong
	Accepted string // what the option accepts
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Option != "" {
		b.WriteString(e.Option)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Accepted != "" {
		b.WriteString("; accepted: ")
		b.WriteString(e.Accepted)
	}
	return b.String()
}

// maxErrors bounds how many mistakes one Parse reports.
const maxErrors = 20

// Load reads and parses the configuration file at path. See Parse.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a configuration in the format of smtp-gated.conf(5); name is
// the file name used in error messages. Options not in the input keep their
// defaults (see Default).
//
// On failure the error is a *Error when there is one mistake and an
// errors.Join of up to 20 *Error values otherwise; its first line is always
// the first mistake in the file. Use errors.As to get at a *Error.
func Parse(r io.Reader, name string) (*Config, error) {
	c, lines, err := parse(r, name)
	if err != nil {
		return nil, err
	}
	if err := c.check(name, lines); err != nil {
		return nil, err
	}
	return c, nil
}

// parse reads the options without the checks across options; it returns
// the line each option was last set on.
func parse(r io.Reader, name string) (*Config, map[string]int, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	text := strings.TrimPrefix(string(data), "\ufeff")
	c := Default()
	lines := make(map[string]int)
	var errs []error
	for i, raw := range strings.Split(text, "\n") {
		key, val, ok := splitLine(raw)
		if !ok {
			continue
		}
		n := i + 1
		op := byName[key]
		if op == nil {
			if e := unknown(name, n, key); e != nil {
				errs = append(errs, e)
			}
		} else if msg, warn := op.setLenient(c, val); msg != "" {
			errs = append(errs, &Error{File: name, Line: n, Option: key, Msg: msg, Accepted: op.accepted()})
		} else {
			lines[op.name] = n
			if warn != "" {
				c.Warnings = append(c.Warnings, (&Error{File: name, Line: n, Option: key, Msg: warn}).Error())
			}
		}
		if len(errs) == maxErrors {
			errs = append(errs, fmt.Errorf("%s:%d: too many errors, stopping", name, n))
			break
		}
	}
	if err := joinErrors(errs); err != nil {
		return nil, nil, err
	}
	return c, lines, nil
}

func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errors.Join(errs...)
}

// splitLine splits a line into option name and value. ok is false for
// blank lines and comments (first non-blank character # or ;). The value
// is the rest of the line after the blanks that follow the name, without
// trailing blanks, and without one pair of enclosing double quotes.
func splitLine(line string) (key, val string, ok bool) {
	line = strings.TrimLeft(line, " \t")
	line = strings.TrimRight(line, " \t\r")
	if line == "" || line[0] == '#' || line[0] == ';' {
		return "", "", false
	}
	key = line
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		key, val = line[:i], strings.TrimLeft(line[i:], " \t")
	}
	if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
		val = val[1 : len(val)-1]
	}
	return key, val, true
}

// unknown is the error for a name that is no option, or nil for the names
// read and ignored.
func unknown(file string, line int, key string) error {
	e := &Error{File: file, Line: line, Option: key, Msg: "unknown option"}
	if !strconv.CanBackquote(key) {
		e.Option = strconv.Quote(key)
	}
	switch {
	case key == "scanner_path":
		// Documented by the original as "not used"; old files may have it.
		return nil
	case strings.HasPrefix(key, "db_"),
		strings.HasPrefix(key, "on_virus"),
		strings.HasPrefix(key, "on_spam"),
		strings.HasPrefix(key, "on_") && strings.Contains(key, "_flood"):
		e.Msg = "not supported by this version"
	case removed[key] != "":
		e.Msg = "no longer supported: " + removed[key]
	}
	return e
}

// pipelineMin is the least pipeline_size: smaller values are raised to
// it, as the original did (its PIPELINE_SIZE_MIN).
const pipelineMin = 16

// check makes the checks that involve more than one option, refuses the
// values that would refuse or cut every client, and raises pipeline_size
// to its least value.
func (c *Config) check(file string, lines map[string]int) error {
	var errs []error
	zero := func(name string, v uint64, why, instead string) {
		if v == 0 {
			errs = append(errs, &Error{File: file, Line: lines[name], Option: name,
				Msg: "0 " + why, Accepted: instead})
		}
	}
	zero("max_connections", c.MaxConnections,
		"would refuse every connection (smtp-gated 1.4 answered each with msg_max_reached)",
		"the number of sessions at once, 1 or more")
	zero("max_per_host", c.MaxPerHost,
		"would refuse every connection and lock its client (as smtp-gated 1.4 did)",
		"the number of sessions at once from one address, 1 or more; for no limit per address, the value of max_connections")
	zero("timeout_idle", c.TimeoutIdle,
		"would close every session at once (as smtp-gated 1.4 did), not turn the timeout off",
		"a number of seconds, 1 or more")
	zero("timeout_direct", c.TimeoutDirect,
		"would close every direct session (after STARTTLS) at once (as smtp-gated 1.4 did), not turn the timeout off",
		"a number of seconds, 1 or more")
	if c.PipelineSize < pipelineMin {
		c.Warnings = append(c.Warnings, (&Error{File: file, Line: lines["pipeline_size"], Option: "pipeline_size",
			Msg: fmt.Sprintf("%d raised to %d, the least value", c.PipelineSize, pipelineMin)}).Error())
		c.PipelineSize = pipelineMin
	}
	if c.Mode == ModeNone {
		msg := "not set"
		if lines["mode"] > 0 {
			msg = `"none" is not a mode`
		}
		errs = append(errs, &Error{File: file, Line: lines["mode"], Option: "mode",
			Msg: msg, Accepted: modeDef.accepted()})
	}
	if c.Mode.Fixed() && !c.FixedServer.IsValid() {
		errs = append(errs, &Error{File: file, Line: lines["mode"], Option: "mode",
			Msg:      fmt.Sprintf("%s needs fixed_server, which is not set", c.Mode),
			Accepted: "set fixed_server to the mail server's address, or choose another mode"})
	}
	if c.Spf == SPFFixed && !c.SpfFixedIp.IsValid() {
		errs = append(errs, &Error{File: file, Line: lines["spf"], Option: "spf",
			Msg:      "fixed needs spf_fixed_ip, which is not set",
			Accepted: "set spf_fixed_ip, or choose another spf mode"})
	}
	for srv := range strings.SplitSeq(c.DnsServer, ",") {
		if srv = strings.TrimSpace(srv); srv == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(srv); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(strings.Trim(srv, "[]")); err != nil {
			errs = append(errs, &Error{File: file, Line: lines["dns_server"], Option: "dns_server",
				Msg:      fmt.Sprintf("%q is not an address", srv),
				Accepted: "IP or IP:PORT ([IPv6]:PORT), comma-separated"})
		}
	}
	return joinErrors(errs)
}

// setLenient is set with the leniency of the original, which read numbers
// with sscanf("%i"), addresses with inet_aton and enumerations through a
// number or word, all ignoring what followed the first blank: when the
// value does not parse as a whole, its first word (for a MULTI, its list
// of words) is read instead and the rest ignored, with a warning. Text
// glued to a value ("10M" for an UINT) is not taken apart.
func (op *option) setLenient(c *Config, s string) (msg, warn string) {
	msg = op.set(c, s)
	if msg == "" || !op.lenient() {
		return msg, ""
	}
	head, rest := op.head(s)
	if rest == "" || head == "" {
		return msg, ""
	}
	if msg = op.set(c, head); msg != "" {
		return msg, ""
	}
	return "", fmt.Sprintf("%q read as %q, the text after it ignored (use a line of its own for a comment)", s, head)
}

// lenient reports whether the option's type ignores trailing text.
func (op *option) lenient() bool {
	switch op.kind {
	case kIP, kPort, kUint, kInt, kSize, kFloat, kOctal, kOne, kMulti:
		return true
	}
	return false
}

// head splits s into the value and the text after it: the first word;
// for a size, a k/m/g suffix after blanks too; for a MULTI, the words
// joined by commas with blanks around them.
func (op *option) head(s string) (head, rest string) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	after := strings.TrimLeft(s[i:], " \t")
	switch op.kind {
	case kSize:
		if len(after) >= 1 && strings.ContainsRune("kKmMgG", rune(after[0])) &&
			(len(after) == 1 || after[1] == ' ' || after[1] == '\t') {
			return s[:i] + after[:1], strings.TrimLeft(after[1:], " \t")
		}
	case kMulti:
		for {
			if strings.HasSuffix(s[:i], ",") || strings.HasPrefix(after, ",") {
				j := strings.IndexAny(after, " \t")
				if j < 0 {
					return s, ""
				}
				i = len(s) - len(after) + j
				after = strings.TrimLeft(s[i:], " \t")
				continue
			}
			break
		}
	}
	return s[:i], after
}

// set parses s into the option's field of c; it returns what was wrong,
// or "".
func (op *option) set(c *Config, s string) string {
	v := reflect.ValueOf(c).Elem().FieldByIndex(op.index)
	switch op.kind {
	case kString:
		v.SetString(s)
	case kRegex:
		var re *regexp.Regexp
		if s != "" {
			var err error
			if re, err = regexp.Compile(s); err != nil {
				why := err.Error()
				var se *syntax.Error
				if errors.As(err, &se) {
					why = se.Code.String()
				}
				return fmt.Sprintf("%q is not a valid regular expression (%s)", s, why)
			}
		}
		v.SetString(s)
		reflect.ValueOf(c).Elem().FieldByIndex(op.re).Set(reflect.ValueOf(re))
	case kIP:
		if s == "" && op.emptyIP {
			v.Set(reflect.ValueOf(netip.Addr{}))
			return ""
		}
		if s == "" {
			return "missing value"
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			var ok bool
			if a, ok = inetAton(s); !ok {
				return fmt.Sprintf("%q is not an IP address", s)
			}
		}
		v.Set(reflect.ValueOf(a))
	case kPort:
		n, msg := parseUint(s)
		if msg == "" && (n < 1 || n > math.MaxUint16) {
			msg = fmt.Sprintf("%q is out of range", s)
		}
		if msg != "" {
			return msg
		}
		v.SetUint(n)
	case kUint:
		n, msg := parseUint(s)
		if msg != "" {
			return msg
		}
		v.SetUint(n)
	case kInt, kSize:
		n, msg := parseInt(s, op.kind == kSize)
		if msg == "" && op.hasMin && n < op.min {
			msg = fmt.Sprintf("%q is out of range", s)
		}
		if msg != "" {
			return msg
		}
		v.SetInt(n)
	case kFloat:
		if s == "" {
			return "missing value"
		}
		f, err := strconv.ParseFloat(s, 64)
		switch {
		case errors.Is(err, strconv.ErrRange), math.IsInf(f, 0), op.noNeg && f < 0:
			return fmt.Sprintf("%q is out of range", s)
		case err != nil, math.IsNaN(f):
			return fmt.Sprintf("%q is not a number", s)
		}
		v.SetFloat(f)
	case kBool:
		switch strings.ToLower(s) {
		case "1", "yes", "on", "true":
			v.SetBool(true)
		case "0", "no", "off", "false":
			v.SetBool(false)
		case "":
			return "missing value"
		default:
			return fmt.Sprintf("%q is not a boolean", s)
		}
	case kOctal:
		if s == "" {
			return "missing value"
		}
		var n uint64
		var err error
		if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
			n, err = strconv.ParseUint(s[2:], 16, 32) // as the original read it
		} else {
			n, err = strconv.ParseUint(s, 8, 32)
		}
		switch {
		case errors.Is(err, strconv.ErrRange), err == nil && n > 0o7777:
			return fmt.Sprintf("%q is out of range", s)
		case err != nil:
			return fmt.Sprintf("%q is not an octal number", s)
		}
		v.SetUint(n)
	case kOne:
		n, msg := op.enum.parseOne(s)
		if msg != "" {
			return msg
		}
		v.SetInt(int64(n))
	case kMulti:
		n, msg := op.enum.parseMulti(s)
		if msg != "" {
			return msg
		}
		v.SetUint(uint64(n))
	}
	return ""
}

var (
	errSyntax = errors.New("not a number")
	errRange  = errors.New("out of range")
)

// parseNum reads an integer with an optional sign, in decimal, octal
// (leading 0) or hexadecimal (leading 0x or 0X).
func parseNum(s string) (neg bool, mag uint64, err error) {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg, s = s[0] == '-', s[1:]
	}
	base := 10
	switch {
	case len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X"):
		base, s = 16, s[2:]
	case len(s) > 1 && s[0] == '0':
		base, s = 8, s[1:]
	}
	// With an explicit base ParseUint takes neither a sign nor underscores.
	mag, err = strconv.ParseUint(s, base, 64)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return neg, 0, errRange
	case err != nil:
		return neg, 0, errSyntax
	}
	return neg, mag, nil
}

func numMsg(s string, err error) string {
	if s == "" {
		return "missing value"
	}
	return fmt.Sprintf("%q is %v", s, err)
}

func parseUint(s string) (uint64, string) {
	neg, n, err := parseNum(s)
	if err == nil && neg && n != 0 {
		err = errRange
	}
	if err != nil {
		return 0, numMsg(s, err)
	}
	return n, ""
}

// parseInt reads an INT; with size, a k, m or g suffix (any case, blanks
// allowed before it) multiplies by 1024, 1024² or 1024³.
func parseInt(s string, size bool) (int64, string) {
	num, mult := s, uint64(1)
	if size && s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			num = strings.TrimRight(s[:len(s)-1], " \t")
		}
	}
	neg, n, err := parseNum(num)
	if err == nil && n > (1<<63)/mult {
		err = errRange
	}
	if err == nil {
		n *= mult
		if n > math.MaxInt64 && !(neg && n == 1<<63) {
			err = errRange
		}
	}
	if err != nil {
		return 0, numMsg(s, err)
	}
	if neg {
		return int64(-n), "" // two's complement: also right for 1<<63
	}
	return int64(n), ""
}

// parseOne reads one word of a ONE enumeration, or its number.
func (d *enumDef) parseOne(s string) (uint32, string) {
	if s == "" {
		return 0, "missing value"
	}
	w := strings.ToLower(s)
	if a, ok := d.aliases[w]; ok {
		w = a
	}
	if why, ok := d.reject[w]; ok {
		return 0, why
	}
	for _, x := range d.words {
		if x.name == w {
			return x.val, ""
		}
	}
	neg, n, err := parseNum(s)
	if err != nil || neg {
		return 0, fmt.Sprintf("unknown value %q", s)
	}
	if why, ok := d.reject[strconv.FormatUint(n, 10)]; ok {
		return 0, why
	}
	for _, x := range d.words {
		if x.num >= 0 && uint64(x.num) == n {
			return x.val, ""
		}
	}
	return 0, fmt.Sprintf("%q is out of range", s)
}

// parseMulti reads a comma-separated list of words of a MULTI enumeration.
// A number stands for the words whose numbers (the original's bit values)
// it holds: each part may be one word or such a number.
func (d *enumDef) parseMulti(s string) (uint32, string) {
	if strings.Trim(s, " \t") == "" {
		return 0, "missing value"
	}
	var v uint32
	sawEmpty := false
	for part := range strings.SplitSeq(s, ",") {
		p := strings.Trim(part, " \t")
		if p == "" {
			return 0, fmt.Sprintf("empty item in %q", s)
		}
		w := strings.ToLower(p)
		if a, ok := d.aliases[w]; ok {
			w = a
		}
		switch {
		case d.empty != "" && w == d.empty:
			sawEmpty = true
		case d.all != "" && w == d.all:
			v |= d.allBits()
		default:
			bit, ok := uint32(0), false
			for _, x := range d.words {
				if x.name == w {
					bit, ok = x.val, true
					break
				}
			}
			if !ok {
				neg, n, err := parseNum(p)
				if err != nil || neg {
					return 0, fmt.Sprintf("unknown value %q", p)
				}
				if bit, ok = d.fromNum(n); !ok {
					return 0, fmt.Sprintf("%q is out of range", p)
				}
				if bit == 0 {
					sawEmpty = d.empty != ""
				}
			}
			v |= bit
		}
	}
	switch {
	case sawEmpty && v != 0:
		return 0, fmt.Sprintf("%q cannot be combined with other values", d.empty)
	case v == 0 && d.empty == "":
		return 0, fmt.Sprintf("%q selects nothing", s)
	}
	return v, ""
}

// fromNum turns a number of a MULTI enumeration into its bits: the words
// whose numbers n holds. ok is false when n has a bit no word has, unless
// the enumeration takes any number (anyNum), whose other bits are dropped.
func (d *enumDef) fromNum(n uint64) (v uint32, ok bool) {
	rest := n
	for _, x := range d.words {
		if x.num > 0 && rest&uint64(x.num) == uint64(x.num) {
			v |= x.val
			rest &^= uint64(x.num)
		}
	}
	if d.numFix != nil {
		v = d.numFix(v)
	}
	return v, rest == 0 || d.anyNum
}

// inetAton reads an IPv4 address in the forms inet_aton(3) takes besides
// the dotted quad: a.b.c (c fills 16 bits), a.b (b fills 24 bits), a
// (32 bits), each part decimal, 0octal or 0xhex.
func inetAton(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" || p[0] == '+' || p[0] == '-' {
			return netip.Addr{}, false
		}
		_, n, err := parseNum(p)
		if err != nil {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	last := len(nums) - 1
	var ip uint64
	for i, n := range nums[:last] {
		if n > 255 {
			return netip.Addr{}, false
		}
		ip |= n << (24 - 8*i)
	}
	if nums[last] >= 1<<(32-8*last) {
		return netip.Addr{}, false
	}
	ip |= nums[last]
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), true
}
