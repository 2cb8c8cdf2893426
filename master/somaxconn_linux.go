package master

import (
	"os"
	"strconv"
	"strings"
)

// somaxconn is net.core.somaxconn.
func somaxconn() (int, bool) {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}
