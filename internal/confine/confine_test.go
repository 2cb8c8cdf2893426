package confine

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"smtp-gated/internal/config"
	"smtp-gated/ipc"
)

// documented reads the Confinement subsection of smtp-gated(8): for each
// role (.It Em ROLE), the line after .It pledge, .It unveil and
// .It Capsicum.
func documented(t *testing.T) map[string]map[string]string {
	t.Helper()
	f, err := os.Open("../../man/smtp-gated.8")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	roles := map[string]map[string]string{}
	var role, field string
	in, inSecurity := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ".Sh "):
			inSecurity = line == ".Sh SECURITY CONSIDERATIONS"
			in = false
			continue
		case strings.HasPrefix(line, ".Ss "):
			in = inSecurity && line == ".Ss Confinement"
			continue
		}
		if !in {
			continue
		}
		if r, ok := strings.CutPrefix(line, ".It Em "); ok {
			role = r
			roles[role] = map[string]string{}
			continue
		}
		switch line {
		case ".It pledge", ".It unveil", ".It Capsicum":
			field = strings.TrimPrefix(line, ".It ")
			continue
		}
		if field != "" && role != "" {
			v, _ := strings.CutPrefix(line, ".Ql ")
			roles[role][field] = v
			field = ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return roles
}

// Each role's promises, paths and Capsicum condition are the ones
// smtp-gated(8) lists, and every child role has a rule.
func TestManualListsRules(t *testing.T) {
	doc := documented(t)
	if len(doc) != len(Rules) {
		t.Errorf("smtp-gated(8) lists %d roles, the table has %d", len(doc), len(Rules))
	}
	for _, role := range []string{ipc.RoleSession, ipc.RoleLookup, ipc.RoleScanner, ipc.RoleLockd} {
		r, err := For(role)
		if err != nil {
			t.Error(err)
			continue
		}
		d, ok := doc[role]
		if !ok {
			t.Errorf("smtp-gated(8) does not list role %s", role)
			continue
		}
		for field, want := range map[string]string{"pledge": r.Pledge, "unveil": r.UnveilList(), "Capsicum": r.Capsicum} {
			if d[field] != want {
				t.Errorf("%s %s: smtp-gated(8) says %q, the table %q", role, field, d[field], want)
			}
		}
	}
}

// Capability mode applies to lookup only when it needs no new socket.
func TestCapabilityMode(t *testing.T) {
	r, _ := For(ipc.RoleLookup)
	cfg := config.Default()
	cfg.Mode = config.ModeNetfilter
	if !r.CapabilityMode(cfg) {
		t.Errorf("lookup, mode netfilter, no dnsbl or spf: not in capability mode")
	}
	for name, change := range map[string]func(c *config.Config){
		"remote":     func(c *config.Config) { c.Mode = config.ModeRemote },
		"remote-udp": func(c *config.Config) { c.Mode = config.ModeRemoteUDP },
		"dnsbl":      func(c *config.Config) { c.Dnsbl = "zen.example" },
	} {
		c := *cfg
		change(&c)
		if r.CapabilityMode(&c) {
			t.Errorf("lookup with %s: capability mode, but it needs new sockets", name)
		}
	}
	for _, role := range []string{ipc.RoleSession, ipc.RoleScanner, ipc.RoleLockd} {
		if r, _ := For(role); r.CapabilityMode(cfg) {
			t.Errorf("%s: capability mode, but it opens sockets or files by name", role)
		}
	}
}
