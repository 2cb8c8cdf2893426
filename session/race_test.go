//go:build race

package session

// raceEnabled: the race detector makes stacks larger.
const raceEnabled = true
