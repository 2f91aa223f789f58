// Package bufpool recycles large byte buffers in power-of-two size
// classes: the fetcher's run buffers and the cache's chunk checks. A
// fresh multi-megabyte buffer costs the kernel new zeroed pages and Go a
// clear of every byte, for each chunk read cold or checked after a start.
package bufpool

import (
	"math/bits"
	"sync"
)

// Pool holds buffers for reuse; the zero value is ready. Idle buffers go
// at the next garbage collections, so a pool bounds nothing itself: its
// users bound how many buffers are in use at once.
type Pool struct{ classes [bits.UintSize + 1]sync.Pool }

// Get returns a buffer of n bytes, its contents undefined, whose capacity
// is n rounded up to a power of two (runs of 4 MiB chunks are 4 or 8 MiB,
// exactly a class). Give it back with Put once nothing reads it.
func (p *Pool) Get(n int) *[]byte {
	class := bits.Len(uint(max(n, 1) - 1)) // 1<<class >= n
	if b, ok := p.classes[class].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<class)
	return &b
}

// Put gives back a buffer Get returned.
func (p *Pool) Put(b *[]byte) {
	p.classes[bits.Len(uint(cap(*b)-1))].Put(b)
}
