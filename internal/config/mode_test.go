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
