package dialog

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"smtp-gated/test/harness"
)

// script is one parsed .dlg file.
type script struct {
	file    string   // base name, e.g. "relay_basic.dlg", for messages
	config  []string // "option value" lines appended to the base configuration
	mta6    bool     // the scripted MTA listens on [::1]
	client6 bool     // the proxy listens on ::1 and the client connects there
	steps   []step
}

// step is one line of a script after the configuration.
type step struct {
	line int    // line number in the file
	text string // the line as written, for messages
	side string // "c", "m" or "" (log, nolog, expect-close-line, sleep)
	op   string // the verb: "connect", "->", "<-", "<~", "raw", "log", ...
	arg  string // TEXT, PREFIX, the regexp source, "c" for data-equals
	raw  []byte // bytes of raw and <-raw, the body of c data
	n    int    // N of long
	dur  time.Duration
}

// ops lists the verbs each side accepts.
var ops = map[string]map[string]bool{
	"c": set("connect", "->", "raw", "long", "<-", "<~", "<-raw", "nothing", "eof", "drain", "close",
		"data"),
	"m": set("accept", "noconnect", "->", "raw", "long", "<-", "<~", "<-raw", "nothing", "eof", "drain", "close",
		"data", "data-equals", "skip-header", "data-aborted"),
}

func set(words ...string) map[string]bool {
	m := make(map[string]bool, len(words))
	for _, w := range words {
		m[w] = true
	}
	return m
}

// Default bounds of the steps that wait.
const (
	readTimeout      = 5 * time.Second        // every read, accept, log and CLOSE-line wait
	eofTimeout       = 2 * time.Second        // eof, drain, data-aborted
	noconnectTimeout = 500 * time.Millisecond // m noconnect
	nothingTimeout   = 500 * time.Millisecond // c/m nothing without a duration
)

// placeholders may appear in regexps; they stand for addresses known only
// while the script runs, regexp-quoted ("127.0.0.1:40312", "[::1]:40312").
var placeholders = []string{"${client}", "${client_ip}", "${proxy}", "${mta}"}

// parseFile reads and parses testdata/NAME.dlg.
func parseFile(path string) (*script, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parse(filepath.Base(path), string(b), filepath.Dir(path))
}

// parse parses a script; dir is where c data finds its files. Errors are
// "file:line: message".
func parse(file, src, dir string) (*script, error) {
	s := &script{file: file}
	for i, line := range strings.Split(src, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		st, err := parseStep(line, dir)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %w", file, i+1, line, err)
		}
		st.line = i + 1
		header := st.op == "config" || st.op == "mta6" || st.op == "client6"
		if header && len(s.steps) > 0 {
			return nil, fmt.Errorf("%s:%d: %s: configuration lines must come before the first step", file, i+1, line)
		}
		switch st.op {
		case "config":
			s.config = append(s.config, st.arg)
		case "mta6":
			s.mta6 = true
		case "client6":
			s.client6 = true
		default:
			s.steps = append(s.steps, st)
		}
	}
	if len(s.steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", file)
	}
	return s, nil
}

// parseStep parses one non-blank, non-comment line.
func parseStep(line, dir string) (step, error) {
	st := step{text: line}
	head, rest, _ := strings.Cut(line, " ")
	switch head {
	case "mta6", "client6":
		if strings.TrimSpace(rest) != "" {
			return st, fmt.Errorf("%s takes no argument", head)
		}
		st.op = head
		return st, nil
	case "config":
		opt := strings.TrimSpace(rest)
		if opt == "" {
			return st, fmt.Errorf("config needs an option")
		}
		st.op, st.arg = "config", opt
		return st, nil
	case "sleep":
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d <= 0 {
			return st, fmt.Errorf("sleep needs a positive duration (e.g. 200ms)")
		}
		st.op, st.dur = "sleep", d
		return st, nil
	case "log", "nolog", "expect-close-line":
		tilde, re, _ := strings.Cut(rest, " ")
		if tilde != "~" || re == "" {
			return st, fmt.Errorf("want %q", head+" ~ REGEXP")
		}
		if err := checkRegexp(re); err != nil {
			return st, err
		}
		st.op, st.arg = head, re
		return st, nil
	case "c", "m":
	default:
		return st, fmt.Errorf("unknown step %q", head)
	}
	st.side = head
	op, arg, _ := strings.Cut(strings.TrimLeft(rest, " \t"), " ")
	if !ops[head][op] {
		return st, fmt.Errorf("unknown step %q for %s", op, head)
	}
	st.op, st.arg = op, arg
	switch op {
	case "connect", "accept", "noconnect", "close", "eof", "drain", "skip-header", "data-aborted":
		if strings.TrimSpace(arg) != "" {
			return st, fmt.Errorf("%s takes no argument", op)
		}
	case "data":
		if head == "m" {
			if strings.TrimSpace(arg) != "" {
				return st, fmt.Errorf("m data takes no argument")
			}
			break
		}
		body, err := dataBody(strings.TrimSpace(arg), dir)
		if err != nil {
			return st, err
		}
		st.raw = body
	case "data-equals":
		if strings.TrimSpace(arg) != "c" {
			return st, fmt.Errorf("want %q", "m data-equals c")
		}
	case "raw", "<-raw":
		b, err := strconv.Unquote(strings.TrimSpace(arg))
		if err != nil {
			return st, fmt.Errorf("want a Go double-quoted string: %v", err)
		}
		if b == "" {
			return st, fmt.Errorf("empty string")
		}
		st.raw = []byte(b)
	case "<~":
		if err := checkRegexp(arg); err != nil {
			return st, err
		}
	case "long":
		ns, prefix, _ := strings.Cut(arg, " ")
		n, err := strconv.Atoi(ns)
		if err != nil || n < len(prefix) {
			return st, fmt.Errorf("want %q with N at least the length of PREFIX", "long N PREFIX")
		}
		st.n, st.arg = n, prefix
	case "nothing":
		st.dur = nothingTimeout
		if a := strings.TrimSpace(arg); a != "" {
			d, err := time.ParseDuration(a)
			if err != nil || d <= 0 {
				return st, fmt.Errorf("nothing takes an optional positive duration")
			}
			st.dur = d
		}
	}
	return st, nil
}

// checkRegexp compiles re with its placeholders replaced, to report a bad
// regexp before the daemon starts.
func checkRegexp(re string) error {
	if _, err := regexp.Compile(expand(re, nil)); err != nil {
		return fmt.Errorf("bad regexp: %v", err)
	}
	return nil
}

// expand replaces the placeholders of re by the quoted addresses in addrs
// (by placeholder; a missing one becomes a regexp matching nothing useful).
func expand(re string, addrs map[string]string) string {
	for _, p := range placeholders {
		v, ok := addrs[p]
		if !ok {
			v = "(?:<" + p[2:len(p)-1] + " unknown>)"
		}
		re = strings.ReplaceAll(re, p, regexp.QuoteMeta(v))
	}
	return re
}

// dataBody makes what `c data` sends: "inline N" (N bytes of generated
// message, CRLF lines) or the file testdata/FILE, dot-stuffed and ended
// with ".\r\n".
func dataBody(arg, dir string) ([]byte, error) {
	if ns, ok := strings.CutPrefix(arg, "inline "); ok {
		n, err := strconv.Atoi(strings.TrimSpace(ns))
		if err != nil || n < 2 {
			return nil, fmt.Errorf("want %q with N >= 2", "c data inline N")
		}
		return harness.DotStuff(generated(n)), nil
	}
	if arg == "" || strings.ContainsAny(arg, " /\\") {
		return nil, fmt.Errorf("want %q or %q", "c data FILE", "c data inline N")
	}
	b, err := os.ReadFile(filepath.Join(dir, arg))
	if err != nil {
		return nil, err
	}
	return harness.DotStuff(b), nil
}

// generated returns a message of exactly n bytes with CRLF line endings,
// whose lines include the ones a relay can get wrong: a lone dot, lines
// starting with one or two dots, an empty line.
func generated(n int) []byte {
	var b strings.Builder
	b.WriteString("From: <alice@client.test>\r\nTo: <bob@mta.test>\r\nSubject: dialog test\r\n\r\n")
	for i := 0; b.Len() < n; i++ {
		switch i % 10 {
		case 3:
			b.WriteString(".\r\n")
		case 5:
			fmt.Fprintf(&b, ".line %d starts with a dot\r\n", i)
		case 7:
			fmt.Fprintf(&b, "..line %d starts with two dots\r\n", i)
		case 8:
			b.WriteString("\r\n")
		default:
			fmt.Fprintf(&b, "line %d of the generated body: the quick brown fox jumps over the lazy dog\r\n", i)
		}
	}
	out := []byte(b.String()[:n-2])
	if len(out) > 0 && out[len(out)-1] == '\r' { // cut between CR and LF: no bare CR
		out[len(out)-1] = 'x'
	}
	return append(out, '\r', '\n')
}
