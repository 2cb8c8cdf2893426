package lookup

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"
	"unsafe"
)

// Go mirrors of the C structures, with the C types' sizes and
// alignments: the compiler's layout of these must be the tables'.

type pfAddr [4]uint32 // union pf_addr: 16 bytes, 4-byte aligned

type pfiocNatlookFreeBSD struct { // net/pfvar.h, FreeBSD
	saddr, daddr, rsaddr, rdaddr pfAddr
	sport, dport, rsport, rdport uint16
	af, proto, direction         uint8
}

type pfiocNatlookOpenBSD struct { // net/pfvar.h, OpenBSD
	saddr, daddr, rsaddr, rdaddr pfAddr
	_, _                         uint16 // rdomain, rrdomain
	sport, dport, rsport, rdport uint16
	af, proto, direction         uint8
}

type i6addr [2]uint64 // union i6addr: 16 bytes, with void *vptr[2]: 8-byte aligned on LP64

type natlookup struct { // netinet/ip_nat.h
	inip, outip, realip       i6addr
	v, flags                  int32
	inport, outport, realport uint16
}

type ipfobj struct { // netinet/ip_fil.h
	rev, size           uint32
	ptr                 uintptr
	typ, offset, retval int32
	_                   [28]byte
}

func TestPfLayouts(t *testing.T) {
	var f pfiocNatlookFreeBSD
	var o pfiocNatlookOpenBSD
	for _, tc := range []struct {
		name string
		l    pfLayout
		got  []uintptr
	}{
		{"freebsd", pfFreeBSD, []uintptr{unsafe.Sizeof(f), unsafe.Offsetof(f.saddr), unsafe.Offsetof(f.daddr), unsafe.Offsetof(f.rsaddr), unsafe.Offsetof(f.rdaddr),
			unsafe.Offsetof(f.sport), unsafe.Offsetof(f.dport), unsafe.Offsetof(f.rsport), unsafe.Offsetof(f.rdport),
			unsafe.Offsetof(f.af), unsafe.Offsetof(f.proto), unsafe.Offsetof(f.direction)}},
		{"openbsd", pfOpenBSD, []uintptr{unsafe.Sizeof(o), unsafe.Offsetof(o.saddr), unsafe.Offsetof(o.daddr), unsafe.Offsetof(o.rsaddr), unsafe.Offsetof(o.rdaddr),
			unsafe.Offsetof(o.sport), unsafe.Offsetof(o.dport), unsafe.Offsetof(o.rsport), unsafe.Offsetof(o.rdport),
			unsafe.Offsetof(o.af), unsafe.Offsetof(o.proto), unsafe.Offsetof(o.direction)}},
	} {
		l := tc.l
		want := []int{l.size, l.saddr, l.daddr, l.rsaddr, l.rdaddr, l.sport, l.dport, l.rsport, l.rdport, l.af, l.proto, l.direction}
		for i := range want {
			if int(tc.got[i]) != want[i] {
				t.Errorf("%s: field %d at %d in the C layout, the table says %d", tc.name, i, tc.got[i], want[i])
			}
		}
		if ioctlSize(l.ioctl) != l.size || l.ioctl>>30 != 3 || (l.ioctl>>8)&0xff != 'D' || l.ioctl&0xff != 23 {
			t.Errorf("%s: DIOCNATLOOK %#x is not _IOWR('D', 23, %d bytes)", tc.name, l.ioctl, l.size)
		}
	}
	// REFERENCE.md's numbers.
	if pfFreeBSD.size != 76 || pfOpenBSD.size != 80 || pfFreeBSD.ioctl != 0xC04C4417 || pfOpenBSD.ioctl != 0xC0504417 {
		t.Error("pf sizes or ioctl numbers differ from the reference")
	}
}

func TestPfEncodeDecode(t *testing.T) {
	client := netip.MustParseAddrPort("10.0.0.5:40000")
	local := netip.MustParseAddrPort("192.0.2.1:9199")
	b, err := pfOpenBSD.encode(client, local)
	if err != nil {
		t.Fatal(err)
	}
	want := "0a000005" + zeros(12) + "c0000201" + zeros(12) + zeros(32) + zeros(4) + "9c40" + "23ef" + zeros(4) + "02" + "06" + "02" + "00"
	if got := hex.EncodeToString(b); got != want {
		t.Errorf("OpenBSD DIOCNATLOOK request:\n got %s\nwant %s", got, want)
	}
	b, err = pfFreeBSD.encode(client, local)
	if err != nil {
		t.Fatal(err)
	}
	want = "0a000005" + zeros(12) + "c0000201" + zeros(12) + zeros(32) + "9c40" + "23ef" + zeros(4) + "02" + "06" + "02" + "00"
	if got := hex.EncodeToString(b); got != want {
		t.Errorf("FreeBSD DIOCNATLOOK request:\n got %s\nwant %s", got, want)
	}
	// The kernel's answer: rdaddr:rdport.
	copy(b[pfFreeBSD.rdaddr:], []byte{198, 51, 100, 2})
	binary.BigEndian.PutUint16(b[pfFreeBSD.rdport:], 25)
	if dst, err := pfFreeBSD.decode(b); err != nil || dst != netip.MustParseAddrPort("198.51.100.2:25") {
		t.Errorf("decode: %v, %v", dst, err)
	}
	// IPv6: the family byte and all 16 bytes.
	c6, l6 := netip.MustParseAddrPort("[2001:db8::5]:40000"), netip.MustParseAddrPort("[2001:db8::1]:9199")
	for _, l := range []pfLayout{pfFreeBSD, pfOpenBSD} {
		b, err := l.encode(c6, l6)
		if err != nil {
			t.Fatal(err)
		}
		wantAF := byte(28)
		if l.system == "openbsd" {
			wantAF = 24
		}
		if b[l.af] != wantAF || netip.AddrFrom16([16]byte(b[l.saddr:l.saddr+16])) != c6.Addr() {
			t.Errorf("%s IPv6: af %d, saddr %x", l.system, b[l.af], b[l.saddr:l.saddr+16])
		}
		copy(b[l.rdaddr:], netip.MustParseAddr("2001:db8:2::25").AsSlice())
		binary.BigEndian.PutUint16(b[l.rdport:], 25)
		if dst, err := l.decode(b); err != nil || dst != netip.MustParseAddrPort("[2001:db8:2::25]:25") {
			t.Errorf("%s IPv6 decode: %v, %v", l.system, dst, err)
		}
	}
	if _, err := pfFreeBSD.encode(client, l6); err == nil {
		t.Error("mixed families: no error")
	}
}

func TestIpfilterLayouts(t *testing.T) {
	var nl natlookup
	got := []uintptr{unsafe.Sizeof(nl), unsafe.Offsetof(nl.inip), unsafe.Offsetof(nl.outip), unsafe.Offsetof(nl.realip),
		unsafe.Offsetof(nl.v), unsafe.Offsetof(nl.flags), unsafe.Offsetof(nl.inport), unsafe.Offsetof(nl.outport), unsafe.Offsetof(nl.realport)}
	want := []int{natlookSize, nlInIP, nlOutIP, nlRealIP, nlV, nlFlags, nlInPort, nlOutPort, nlRealPort}
	for i := range want {
		if int(got[i]) != want[i] {
			t.Errorf("natlookup field %d at %d in the C layout, the table says %d", i, got[i], want[i])
		}
	}
	var o ipfobj
	got = []uintptr{unsafe.Sizeof(o), unsafe.Offsetof(o.rev), unsafe.Offsetof(o.size), unsafe.Offsetof(o.ptr),
		unsafe.Offsetof(o.typ), unsafe.Offsetof(o.offset), unsafe.Offsetof(o.retval)}
	want = []int{ipfobjSize, ipfoRev, ipfoSize, ipfoPtr, ipfoType, ipfoOffset, ipfoRetval}
	for i := range want {
		if int(got[i]) != want[i] {
			t.Errorf("ipfobj field %d at %d in the C layout, the table says %d", i, got[i], want[i])
		}
	}
	if ioctlSize(siocgnatl) != ipfobjSize || siocgnatl != 0xC038723F || (siocgnatl>>8)&0xff != 'r' || siocgnatl&0xff != 63 {
		t.Errorf("SIOCGNATL %#x is not _IOWR('r', 63, %d bytes)", siocgnatl, ipfobjSize)
	}

	client := netip.MustParseAddrPort("10.0.0.5:40000")
	local := netip.MustParseAddrPort("192.0.2.1:9199")
	b, err := natlookEncode(client, local)
	if err != nil {
		t.Fatal(err)
	}
	if netip.AddrFrom4([4]byte(b[nlInIP:])) != local.Addr() || netip.AddrFrom4([4]byte(b[nlOutIP:])) != client.Addr() ||
		binary.BigEndian.Uint16(b[nlInPort:]) != 9199 || binary.BigEndian.Uint16(b[nlOutPort:]) != 40000 ||
		binary.NativeEndian.Uint32(b[nlV:]) != 4 || binary.NativeEndian.Uint32(b[nlFlags:]) != ipnTCP {
		t.Errorf("natlookup request %x", b)
	}
	copy(b[nlRealIP:], []byte{198, 51, 100, 2})
	binary.BigEndian.PutUint16(b[nlRealPort:], 25)
	if dst, err := natlookDecode(b); err != nil || dst != netip.MustParseAddrPort("198.51.100.2:25") {
		t.Errorf("natlookup decode: %v, %v", dst, err)
	}
	obj := ipfobjEncode(0x1122334455667788)
	if binary.NativeEndian.Uint32(obj[ipfoRev:]) != ipfilterVersion || binary.NativeEndian.Uint32(obj[ipfoSize:]) != natlookSize ||
		binary.NativeEndian.Uint64(obj[ipfoPtr:]) != 0x1122334455667788 || binary.NativeEndian.Uint32(obj[ipfoType:]) != ipfobjNatlookup {
		t.Errorf("ipfobj %x", obj)
	}
}

func zeros(n int) string {
	b := make([]byte, 2*n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}
