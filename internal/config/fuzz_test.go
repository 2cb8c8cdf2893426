package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, and that whatever it accepts
// is written and read back unchanged.
func FuzzParse(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input, slowly for big ones.
	f.Add("mode remote\nbind_address ::1\nlimit_core_size -1\nlock_perm 0600\nmax_load 1.5\nlog_helo on\nmsg_hello \"hi there\"\n")
	f.Add(base + "lock_on virus,spam\nport 0x19\nlimit_fsize 10 M\n")
	f.Add("mode fixed\nfixed_server 10.0.0.1\nproxy_name \"a b\"\n# c\n; d\n")
	f.Add("mode 3\nspf 1\nlog_mail_from no\nauth_skip 0\nlog_level 7\nregex_reject_helo (?i)x\n")
	f.Add("\ufeffmode pf\r\nabuse \"\"x\"\"\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Parse(strings.NewReader(in), "fuzz.conf")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.conf") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if err := c.Write(&out, true); err != nil {
			t.Fatalf("Write: %v", err)
		}
		c2, err := Parse(bytes.NewReader(out.Bytes()), "written")
		if err != nil {
			t.Fatalf("Parse of Write output: %v\ninput:\n%q\noutput:\n%s", err, in, out.String())
		}
		if !reflect.DeepEqual(c, c2) {
			var out2 bytes.Buffer
			c2.Write(&out2, true)
			t.Fatalf("round trip differs\ninput:\n%q\nfirst:\n%s\nsecond:\n%s", in, out.String(), out2.String())
		}
	})
}
