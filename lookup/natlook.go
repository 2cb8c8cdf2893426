package lookup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// The BSD NAT look-ups (pf DIOCNATLOOK, ipfilter SIOCGNATL) pass C
// structures that x/sys does not define. They are built here as byte
// arrays at the offsets of the systems' headers, in files without build
// tags, so that the layouts are pinned by tests that run on any system;
// pf_*.go and ipnat_*.go only issue the ioctls.

// pfioc_natlook, from net/pfvar.h. pf_addr is a 16-byte union (4-byte
// aligned), sa_family_t one byte, ports in network order.
type pfLayout struct {
	size                         int
	saddr, daddr, rsaddr, rdaddr int
	sport, dport, rsport, rdport int
	af, proto, direction         int
	ioctl                        uint64 // DIOCNATLOOK = _IOWR('D', 23, struct pfioc_natlook)
	system                       string
}

var (
	pfFreeBSD = pfLayout{size: 76, saddr: 0, daddr: 16, rsaddr: 32, rdaddr: 48,
		sport: 64, dport: 66, rsport: 68, rdport: 70, af: 72, proto: 73, direction: 74,
		ioctl: 0xC04C4417, system: "freebsd"}
	// OpenBSD puts rdomain and rrdomain (uint16) at 64 and 66.
	pfOpenBSD = pfLayout{size: 80, saddr: 0, daddr: 16, rsaddr: 32, rdaddr: 48,
		sport: 68, dport: 70, rsport: 72, rdport: 74, af: 76, proto: 77, direction: 78,
		ioctl: 0xC0504417, system: "openbsd"}
)

// Values of pfioc_natlook fields.
const (
	pfOut       = 2 // PF_OUT
	ipprotoTCP  = 6
	afInet      = 2
	afInet6BSD  = 28 // FreeBSD
	afInet6OBSD = 24 // OpenBSD
)

// ioctlSize is the parameter size encoded in an _IOWR request number.
func ioctlSize(req uint64) int { return int(req>>16) & 0x1fff }

// encode builds the DIOCNATLOOK request for a connection from client to
// the proxy's local address (after the rdr rule rewrote it).
func (l pfLayout) encode(client, local netip.AddrPort) ([]byte, error) {
	c, p := client.Addr().Unmap(), local.Addr().Unmap()
	if c.Is4() != p.Is4() {
		return nil, fmt.Errorf("pf: client %v and local address %v are of different families", client, local)
	}
	b := make([]byte, l.size)
	af := byte(afInet)
	if !c.Is4() {
		af = afInet6BSD
		if l.system == "openbsd" {
			af = afInet6OBSD
		}
	}
	putAddr(b[l.saddr:], c)
	putAddr(b[l.daddr:], p)
	binary.BigEndian.PutUint16(b[l.sport:], client.Port())
	binary.BigEndian.PutUint16(b[l.dport:], local.Port())
	b[l.af], b[l.proto], b[l.direction] = af, ipprotoTCP, pfOut
	return b, nil
}

// decode reads the answer: the original destination, rdaddr:rdport.
func (l pfLayout) decode(b []byte) (netip.AddrPort, error) {
	if len(b) != l.size {
		return netip.AddrPort{}, fmt.Errorf("pf: answer of %d bytes, want %d", len(b), l.size)
	}
	a, err := getAddr(b[l.rdaddr:], b[l.af] == afInet)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[l.rdport:])), nil
}

// FreeBSD ipfilter: struct natlookup (netinet/ip_nat.h) inside struct
// ipfobj (netinet/ip_fil.h), for SIOCGNATL on /dev/ipnat.
const (
	natlookSize     = 64
	nlInIP          = 0  // i6addr_t nl_inipaddr: the proxy's local address
	nlOutIP         = 16 // nl_outipaddr: the client
	nlRealIP        = 32 // nl_realipaddr: the answer
	nlV             = 48 // int: 4 or 6
	nlFlags         = 52 // int: IPN_TCP
	nlInPort        = 56 // u_short, network order
	nlOutPort       = 58
	nlRealPort      = 60
	ipnTCP          = 1
	ipfobjSize      = 56 // on LP64
	ipfoRev         = 0  // u_32_t
	ipfoSize        = 4  // u_32_t
	ipfoPtr         = 8  // void *
	ipfoType        = 16 // int
	ipfoOffset      = 20
	ipfoRetval      = 24
	ipfilterVersion = 5010200 // IPFILTER_VERSION of FreeBSD's ipfilter 5.1.2
	ipfobjNatlookup = 9       // IPFOBJ_NATLOOKUP
	siocgnatl       = 0xC038723F
)

// natlookEncode builds a natlookup for a connection from client to the
// proxy's local address.
func natlookEncode(client, local netip.AddrPort) ([]byte, error) {
	c, p := client.Addr().Unmap(), local.Addr().Unmap()
	if c.Is4() != p.Is4() {
		return nil, fmt.Errorf("ipfilter: client %v and local address %v are of different families", client, local)
	}
	b := make([]byte, natlookSize)
	putAddr(b[nlInIP:], p)
	putAddr(b[nlOutIP:], c)
	v := uint32(4)
	if !c.Is4() {
		v = 6
	}
	binary.NativeEndian.PutUint32(b[nlV:], v)
	binary.NativeEndian.PutUint32(b[nlFlags:], ipnTCP)
	binary.BigEndian.PutUint16(b[nlInPort:], local.Port())
	binary.BigEndian.PutUint16(b[nlOutPort:], client.Port())
	return b, nil
}

// natlookDecode reads the answer: nl_realipaddr:nl_realport.
func natlookDecode(b []byte) (netip.AddrPort, error) {
	if len(b) != natlookSize {
		return netip.AddrPort{}, fmt.Errorf("ipfilter: answer of %d bytes, want %d", len(b), natlookSize)
	}
	a, err := getAddr(b[nlRealIP:], binary.NativeEndian.Uint32(b[nlV:]) == 4)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[nlRealPort:])), nil
}

// ipfobjEncode builds the ipfobj that points at a natlookup. ptr is the
// natlookup's address; the caller keeps it alive across the ioctl.
func ipfobjEncode(ptr uintptr) []byte {
	b := make([]byte, ipfobjSize)
	binary.NativeEndian.PutUint32(b[ipfoRev:], ipfilterVersion)
	binary.NativeEndian.PutUint32(b[ipfoSize:], natlookSize)
	binary.NativeEndian.PutUint64(b[ipfoPtr:], uint64(ptr))
	binary.NativeEndian.PutUint32(b[ipfoType:], ipfobjNatlookup)
	return b
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b[:4], v[:])
		return
	}
	v := a.As16()
	copy(b[:16], v[:])
}

func getAddr(b []byte, v4 bool) (netip.Addr, error) {
	if v4 {
		return netip.AddrFrom4([4]byte(b[:4])), nil
	}
	if len(b) < 16 {
		return netip.Addr{}, errors.New("short address")
	}
	return netip.AddrFrom16([16]byte(b[:16])), nil
}
