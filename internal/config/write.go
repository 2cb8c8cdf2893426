package config

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
)

// Write prints the whole configuration in the file's own syntax: one
// "name value" line per option under "# SECTION" comments, the msg_*
// options only when withMessages is true. Parse reads the output back into
// an equal Config; a Config that goes to another process must be written
// withMessages. A value holding a newline cannot be written: Write fails.
func (c *Config) Write(w io.Writer, withMessages bool) error {
	bw := bufio.NewWriter(w)
	bw.WriteString("# smtp-gated configuration\n")
	for _, s := range sections {
		if s.messages && !withMessages {
			continue
		}
		fmt.Fprintf(bw, "\n# %s\n", s.title)
		for _, op := range s.opts {
			v := op.get(c)
			if strings.ContainsAny(v, "\n") {
				return fmt.Errorf("config: %s: a value with a newline cannot be written", op.name)
			}
			fmt.Fprintf(bw, "%s %s\n", op.name, quote(v))
		}
	}
	return bw.Flush()
}

// quote puts double quotes around a value that would not read back as it
// is: empty, with blanks, quotes, or comment characters.
func quote(v string) string {
	if v == "" || strings.ContainsAny(v, " \t\r\"#;") {
		return `"` + v + `"`
	}
	return v
}

// Get returns the value of one option (canonical name or alias) as Write
// prints it, without Write's quotes: "0660", "virus,spam", "64M", "".
func (c *Config) Get(name string) (string, error) {
	op := byName[name]
	if op == nil {
		return "", fmt.Errorf("%s: unknown option", name)
	}
	return op.get(c), nil
}

// Names returns the canonical name of every option, in the order Write
// prints them. Aliases and scanner_path (read and ignored) are not in it.
func Names() []string {
	var names []string
	for _, s := range sections {
		for _, op := range s.opts {
			names = append(names, op.name)
		}
	}
	return names
}

// RestartOnly returns the names of the [RESTART] options whose values
// differ between old and new: a reload cannot apply them.
func RestartOnly(old, new *Config) []string {
	var names []string
	for _, s := range sections {
		for _, op := range s.opts {
			if op.restart && op.get(old) != op.get(new) {
				names = append(names, op.name)
			}
		}
	}
	return names
}

// get formats the option's field of c.
func (op *option) get(c *Config) string {
	v := reflect.ValueOf(c).Elem().FieldByIndex(op.index)
	switch op.kind {
	case kString, kRegex:
		return v.String()
	case kIP:
		a := v.Interface().(netip.Addr)
		if !a.IsValid() {
			return ""
		}
		return a.String()
	case kPort, kUint:
		return strconv.FormatUint(v.Uint(), 10)
	case kInt:
		return strconv.FormatInt(v.Int(), 10)
	case kSize:
		return formatSize(v.Int())
	case kFloat:
		return strconv.FormatFloat(v.Float(), 'g', -1, 64)
	case kBool:
		if v.Bool() {
			return "yes"
		}
		return "no"
	case kOctal:
		return fmt.Sprintf("%04o", v.Uint())
	case kOne:
		return op.enum.name(uint32(v.Int()), v.Type().Name())
	case kMulti:
		return op.enum.format(uint32(v.Uint()))
	}
	return ""
}

// formatSize prints a byte count with the largest k/M/G suffix that
// divides it.
func formatSize(n int64) string {
	switch {
	case n > 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "G"
	case n > 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "M"
	case n > 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "K"
	}
	return strconv.FormatInt(n, 10)
}
