// Command chrootaction is an action_script for tests of chroot_path: a
// program with no interpreter and no library, so that it runs in an empty
// chroot. Each run writes its arguments (ARGC, ARG1...), its working
// directory (CWD) and its environment, one NAME=value a line, to
// /out/run.PID as it sees the file system.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	var b strings.Builder
	fmt.Fprintf(&b, "ARGC=%d\n", len(os.Args)-1)
	for i, a := range os.Args[1:] {
		fmt.Fprintf(&b, "ARG%d=%s\n", i+1, a)
	}
	wd, err := os.Getwd()
	if err != nil {
		wd = "error: " + err.Error()
	}
	fmt.Fprintf(&b, "CWD=%s\n", wd)
	for _, kv := range os.Environ() {
		b.WriteString(kv + "\n")
	}
	path := fmt.Sprintf("/out/run.%d", os.Getpid())
	if err := os.WriteFile(path+".tmp", []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
