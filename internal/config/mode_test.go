package config

import "testing"

// The mode predicates, for every mode: one table instead of mode lists
// in every process.
func TestModePredicates(t *testing.T) {
	for _, tt := range []struct {
		m                                             Mode
		fixed, remote, transparent, localDst, kernNAT bool
		natDev                                        string
	}{
		{ModeFixed, true, false, false, false, false, ""},
		{ModeFixedXclient, true, false, false, false, false, ""},
		{ModeRemote, false, true, false, false, false, ""},
		{ModeRemoteUDP, false, true, false, false, false, ""},
		{ModeGetsockname, false, false, false, true, false, ""},
		{ModeNetfilter, false, false, false, false, true, ""},
		{ModeTproxy, false, false, true, true, true, ""},
		{ModeTproxyNetfilter, false, false, true, true, false, ""},
		{ModeIpfw, false, false, false, true, true, ""},
		{ModeIpfilter, false, false, false, false, true, "/dev/ipnat"},
		{ModePf, false, false, false, false, true, "/dev/pf"},
	} {
		m := tt.m
		if m.Fixed() != tt.fixed || m.Remote() != tt.remote || m.Transparent() != tt.transparent ||
			m.LocalIsDestination() != tt.localDst || m.KernelNAT() != tt.kernNAT || m.NATDevice() != tt.natDev {
			t.Errorf("%v: fixed %v remote %v transparent %v local-is-destination %v kernel-NAT %v NAT device %q",
				m, m.Fixed(), m.Remote(), m.Transparent(), m.LocalIsDestination(), m.KernelNAT(), m.NATDevice())
		}
	}
}

// An event travels as its lock_on word, and nothing else is an event.
func TestEventText(t *testing.T) {
	for _, e := range []LockOn{LockVirus, LockSpam, LockMaxHost, LockMaxIdent, LockDNSBL, LockSPF, LockRegex, LockEarlytalker, LockRatelimit} {
		b, err := e.MarshalText()
		var back LockOn
		if err != nil || back.UnmarshalText(b) != nil || back != e {
			t.Errorf("%v: %q %v, read back %v", e, b, err, back)
		}
	}
	var e LockOn
	if e.UnmarshalText([]byte("earlytalk")) != nil || e != LockEarlytalker {
		t.Errorf("earlytalk: %v", e)
	}
	for _, w := range []string{"", "any", "never", "virus,spam", "VIRUS", "frob\n"} {
		if e.UnmarshalText([]byte(w)) == nil {
			t.Errorf("%q read as an event", w)
		}
	}
	for _, e := range []LockOn{LockAny, LockVirus | LockSpam, 1 << 30} {
		if _, err := e.MarshalText(); err == nil {
			t.Errorf("%v written as an event", e)
		}
	}
	if !LockMaxIdent.RunsScript() || LockDNSBL.RunsScript() {
		t.Error("RunsScript")
	}
}
