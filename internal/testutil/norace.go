//go:build !race

package testutil

// Race reports whether the race detector is on: it changes what some
// measurements can promise (sync.Pool drops a quarter of what it is given).
const Race = false
