// Command sinkmta runs the test SMTP sink (smtp-gated/test/sinkmta) by hand:
// it accepts and counts mail on -listen until interrupted, printing the
// counters every -stats interval and once more at exit.
//
//	go run ./test/sinkmta/cmd/sinkmta -listen 127.0.0.1:2525
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"smtp-gated/test/sinkmta"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:2525", "address to listen on")
	stats := flag.Duration("stats", 5*time.Second, "print the counters this often when they change (0: only at exit)")
	maxSize := flag.Int64("max-size", sinkmta.DefaultMaxSize, "SIZE advertised and enforced, in bytes (0: no limit)")
	flag.Parse()

	s, err := sinkmta.Start(*listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sinkmta:", err)
		os.Exit(1)
	}
	s.SetMaxSize(*maxSize)
	fmt.Printf("sinkmta: listening on %s\n", s.Addr())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var tick <-chan time.Time
	if *stats > 0 {
		t := time.NewTicker(*stats)
		defer t.Stop()
		tick = t.C
	}
	var last sinkmta.Stats
	start := time.Now()
	for {
		select {
		case <-tick:
			if st := s.Stats(); st != last {
				fmt.Printf("sinkmta: %v\n", st)
				last = st
			}
		case sig := <-sigs:
			s.Close()
			st := s.Stats()
			secs := time.Since(start).Seconds()
			fmt.Printf("sinkmta: %v: %v (%.0f messages/s, %.1f MB/s over %.0f s)\n",
				sig, st, float64(st.Messages)/secs, float64(st.Bytes)/secs/1e6, secs)
			return
		}
	}
}
