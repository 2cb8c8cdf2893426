package master

// fallbackBacklog is the listen backlog when the kernel's maximum cannot
// be read.
const fallbackBacklog = 128

// backlog is the listen backlog for connect_queue n: n itself when set,
// else (0, the default) the kernel's maximum, SOMAXCONN, as read from the
// system, or fallbackBacklog when the system does not tell. A queue as
// short as 1.4's default of 16 drops SYNs under any burst of clients.
func backlog(n int) int {
	if n > 0 {
		return n
	}
	if m, ok := somaxconn(); ok && m > 0 {
		return m
	}
	return fallbackBacklog
}
