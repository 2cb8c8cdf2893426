package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// SilentMTA starts an MTA on 127.0.0.1 that greets, answers EHLO (with
// PIPELINING), and from then on reads whatever comes and never answers
// again. It returns its address; it stops at the end of the test.
func SilentMTA(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.WriteString(c, "220 silent.test ESMTP\r\n")
				br := bufio.NewReader(c)
				if _, err := br.ReadString('\n'); err != nil {
					return
				}
				io.WriteString(c, "250-silent.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
				io.Copy(io.Discard, br)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

var workerReady = regexp.MustCompile(`master: session (\d+) ready \(pid (\d+)\)`)

// SessionWorkers returns the pids of the daemon's session workers, as its
// log announced them (the latest pid of each worker).
func (d *Daemon) SessionWorkers() []int {
	last := map[string]int{}
	var order []string
	for _, l := range d.LogLines() {
		m := workerReady.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if _, ok := last[m[1]]; !ok {
			order = append(order, m[1])
		}
		last[m[1]], _ = strconv.Atoi(m[2])
	}
	var pids []int
	for _, n := range order {
		pids = append(pids, last[n])
	}
	return pids
}

// ProcStatusKiB reads a "kB" field of /proc/PID/status (VmRSS, VmHWM...).
func ProcStatusKiB(pid int, field string) (int, error) {
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// PipelineNOOPs connects to addr, says EHLO, then writes pipelined
// "NOOP\r\n" lines without reading, until total bytes are written or no
// write makes progress for stall (the other side stopped reading). It
// returns the bytes written and the connection, open, for the caller to
// close.
func PipelineNOOPs(addr string, total int64, stall time.Duration) (int64, net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, nil, err
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	reply := func() error {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return err
			}
			if len(l) < 4 || l[0] != '2' {
				return fmt.Errorf("reply %q", l)
			}
			if l[3] == ' ' {
				return nil
			}
		}
	}
	if err := reply(); err != nil {
		c.Close()
		return 0, nil, fmt.Errorf("greeting: %w", err)
	}
	io.WriteString(c, "EHLO client.test\r\n")
	if err := reply(); err != nil {
		c.Close()
		return 0, nil, fmt.Errorf("EHLO: %w", err)
	}
	chunk := []byte(strings.Repeat("NOOP\r\n", 64<<10/6))
	var n int64
	for n < total {
		b := chunk
		if rest := total - n; rest < int64(len(b)) {
			b = b[:rest-rest%6]
			if len(b) == 0 {
				break
			}
		}
		c.SetWriteDeadline(time.Now().Add(stall))
		k, err := c.Write(b)
		n += int64(k)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return n, c, nil
			}
			return n, c, err
		}
	}
	return n, c, nil
}
