package bench

import (
	"testing"
	"time"
	"fmt"

	"smtp-gated/test/harness"
)

func BenchmarkZZTmp(b *testing.B) {
	c := harness.Clamd(b)
	r := clamdRig(b, c, false, "no")
	data := payload(10 << 20)
	for i := 0; i < 3; i++ {
		fmt.Println(endOfDataPaced(b, r.proxy, data, 1, 100*time.Millisecond))
	}
	for _, l := range r.daemon.LogLines() {
		fmt.Println(l)
	}
}
