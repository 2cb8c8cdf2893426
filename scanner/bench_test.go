package scanner

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"smtp-gated/ipc"
	"smtp-gated/test/harness"
)

// textMessage is a plain message of about size bytes: header, then lines
// of random printable text.
func textMessage(size int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	b.WriteString("From: <a@example.com>\r\nTo: <b@example.org>\r\nSubject: bench\r\n\r\n")
	const chars = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?-_=+"
	for b.Len() < size {
		for range 1 + r.IntN(76) {
			b.WriteByte(chars[r.IntN(len(chars))])
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// BenchmarkClamd measures one clamd scan of a clean message (connection,
// transfer, clamd's own work, answer) over FILDES and INSTREAM:
//
//	go test -run '^$' -bench Clamd ./scanner/
func BenchmarkClamd(b *testing.B) {
	c := harness.Clamd(b)
	for _, size := range []int{10 << 10, 1 << 20, 10 << 20} {
		f := privateSpool(b, textMessage(size))
		for _, tr := range []struct{ name, addr string }{{"fildes", c.Socket}, {"instream", c.Addr}} {
			b.Run(fmt.Sprintf("%s/%dKiB", tr.name, size>>10), func(b *testing.B) {
				cfg := clamdConfig(tr.addr)
				cfg.ScanMaxSize = 1 << 40 // 10 MiB is over the default
				e, _ := testEngine(b, cfg)
				q := &ipc.Scan{SessionID: 1, Transaction: 1}
				b.SetBytes(int64(size))
				for b.Loop() {
					if v := e.scan(context.Background(), q, f); v.Kind != ipc.VerdictClean || len(v.Scanned) != 1 {
						b.Fatalf("verdict %+v", v)
					}
				}
			})
		}
	}
}
