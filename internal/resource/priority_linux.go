package resource

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setPriority sets the nice value of every thread of the process: on
// Linux setpriority(PRIO_PROCESS, 0) changes the calling thread only.
// Threads created later inherit the value of the thread that creates
// them, so once every thread has it, every future thread has it too. The
// task list is read until a pass finds no thread it had not set.
func setPriority(prio int) error {
	done := map[int]bool{}
	for range 10 {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return unix.Setpriority(unix.PRIO_PROCESS, 0, prio)
		}
		fresh := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, prio); err != nil && err != unix.ESRCH {
				return err
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
	return nil
}
