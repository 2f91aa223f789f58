package bufpool_test

import (
	"testing"

	"github.com/lazyblk/lazyblk/cache/bufpool"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestClasses: a buffer holds what was asked, in the next power-of-two
// capacity, and one given back serves the next request of its class
// without an allocation (not asserted under -race, where sync.Pool drops
// some of what it is given on purpose).
func TestClasses(t *testing.T) {
	var p bufpool.Pool
	for _, n := range []int{0, 1, 4095, 4096, 4097, 4 << 20, 5 << 20, 8 << 20} {
		b := p.Get(n)
		if c := cap(*b); len(*b) != n || c < n || c&(c-1) != 0 || c >= 2*max(n, 1) {
			t.Errorf("Get(%d): len %d cap %d; want len %d, cap the next power of two", n, len(*b), c, n)
		}
		p.Put(b)
	}
	if testutil.Race {
		return
	}
	if n := testing.AllocsPerRun(10, func() { p.Put(p.Get(3 << 20)) }); n > 0 {
		t.Errorf("Get after Put of the same class: %v allocations; want none", n)
	}
}
