package config

import (
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

const (
	manPage = "../../man/smtp-gated.conf.5"
	sample  = "../../etc/smtp-gated.conf"
)

func TestEveryOptionDocumented(t *testing.T) {
	man, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	smp, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range Names() {
		q := regexp.QuoteMeta(n)
		if !regexp.MustCompile(`(?m)^\.It Cm ` + q + `( |$)`).Match(man) {
			t.Errorf("%s: no \".It Cm %s\" item in %s", n, n, manPage)
		}
		if !regexp.MustCompile(`(?m)^;?` + q + `[ \t]`).Match(smp) {
			t.Errorf("%s: no line for it in %s", n, sample)
		}
	}
}

// The man page shows the default text of every message.
func TestManPageMessages(t *testing.T) {
	man, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	c := Default()
	for _, n := range Names() {
		if !strings.HasPrefix(n, "msg_") {
			continue
		}
		v, _ := c.Get(n)
		// \& only keeps mandoc from reading a sentence end.
		if !strings.Contains(strings.ReplaceAll(string(man), `\&`, ""), `\(lq`+v+`\(rq`) {
			t.Errorf("%s: default text %q not in %s", n, v, manPage)
		}
	}
}

// The sample parses; with its ";name value" lines uncommented it is
// still the defaults, plus the three options it sets.
func TestSampleShowsDefaults(t *testing.T) {
	c, err := Load(sample)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Mode = ModeFixed
	want.FixedServer = netip.MustParseAddr("127.0.0.1")
	want.FixedServerPort = 25
	if !reflect.DeepEqual(c, want) {
		t.Errorf("sample as shipped: got %+v, want %+v", c, want)
	}

	data, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	n := 0
	for i, l := range lines {
		if name, _, ok := strings.Cut(strings.TrimPrefix(l, ";"), " "); ok && l != "" && l[0] == ';' && byName[name] != nil {
			lines[i] = l[1:]
			n++
		}
	}
	if want := len(Names()) - 3; n != want {
		t.Errorf("got %d commented-out options, want %d", n, want)
	}
	c, err = Parse(strings.NewReader(strings.Join(lines, "\n")), sample+" (uncommented)")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("sample uncommented: got %+v, want %+v", c, want)
	}
}
