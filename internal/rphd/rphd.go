// Package rphd is the proxy-helper protocol of mode remote-udp: one
// 66-byte big-endian datagram each way between smtp-gated and the helper
// on the router (cmd/smtp-gated-helper).
//
//	off len field
//	  0   4 magic    "RPHD"
//	  4   4 cookie   random, echoed by the reply
//	  8   4 secret   remote_udp_secret
//	 12   2 version  0x0402
//	 14   2 flags    QUERY, REPLY, FOUND, NOTFOUND
//	 16   4 src      the client as the proxy sees it (query); reply: the client before NAT
//	 20   4 dst      the proxy's local address (query); reply: the original destination
//	 24   2 src_port
//	 26   2 dst_port
//	 28  32 ident    zero in a query, NUL-terminated in a reply
//	 60   6 mac      unused
package rphd

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Len is the size of every datagram.
const Len = 66

// Protocol constants.
const (
	Magic   = 0x52504844 // "RPHD"
	Version = 0x0402

	FlagQuery    = 0x0001
	FlagReply    = 0x0002
	FlagFound    = 0x0010
	FlagNotFound = 0x0020

	identLen = 32
)

// Datagram is one query or reply.
type Datagram struct {
	Magic, Cookie, Secret uint32
	Version, Flags        uint16
	Src, Dst              [4]byte
	SrcPort, DstPort      uint16
	Ident                 [identLen]byte
	MAC                   [6]byte
}

// Marshal encodes d in its 66 bytes.
func (d *Datagram) Marshal() []byte {
	b := make([]byte, Len)
	binary.BigEndian.PutUint32(b[0:], d.Magic)
	binary.BigEndian.PutUint32(b[4:], d.Cookie)
	binary.BigEndian.PutUint32(b[8:], d.Secret)
	binary.BigEndian.PutUint16(b[12:], d.Version)
	binary.BigEndian.PutUint16(b[14:], d.Flags)
	copy(b[16:20], d.Src[:])
	copy(b[20:24], d.Dst[:])
	binary.BigEndian.PutUint16(b[24:], d.SrcPort)
	binary.BigEndian.PutUint16(b[26:], d.DstPort)
	copy(b[28:60], d.Ident[:])
	copy(b[60:66], d.MAC[:])
	return b
}

// Unmarshal decodes a datagram; anything but 66 bytes is an error.
func Unmarshal(b []byte) (*Datagram, error) {
	if len(b) != Len {
		return nil, fmt.Errorf("datagram of %d bytes, want %d", len(b), Len)
	}
	d := &Datagram{
		Magic:   binary.BigEndian.Uint32(b[0:]),
		Cookie:  binary.BigEndian.Uint32(b[4:]),
		Secret:  binary.BigEndian.Uint32(b[8:]),
		Version: binary.BigEndian.Uint16(b[12:]),
		Flags:   binary.BigEndian.Uint16(b[14:]),
		SrcPort: binary.BigEndian.Uint16(b[24:]),
		DstPort: binary.BigEndian.Uint16(b[26:]),
	}
	copy(d.Src[:], b[16:20])
	copy(d.Dst[:], b[20:24])
	copy(d.Ident[:], b[28:60])
	copy(d.MAC[:], b[60:66])
	return d, nil
}

// SetIdent stores s, cut to 31 bytes, NUL-terminated.
func (d *Datagram) SetIdent(s string) {
	d.Ident = [identLen]byte{}
	copy(d.Ident[:identLen-1], s)
}

// IdentString is the ident up to its NUL.
func (d *Datagram) IdentString() string {
	b := d.Ident[:]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
