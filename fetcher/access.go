package fetcher

import (
	"slices"
	"sync"

	"github.com/lazyblk/lazyblk/imagefmt"
)

// accessBlock is the granularity at which reads are recorded: the page
// size, what the kernel reads a file in.
const accessBlock = 4096

// accessLog records which bytes of the image readers asked for, in the
// order they first asked: what a start-up reads, at block granularity, for
// a trace that names files (imagefmt.MapFiles) rather than chunks. It
// costs a bit per 4 KiB of image (300 KiB for 10 GiB) and a run per
// discontiguous first read.
type accessLog struct {
	mu   sync.Mutex // guards seen and runs
	seen []uint64   // one bit per block, allocated on the first read
	runs []imagefmt.Range
}

// record notes a read of n bytes at off.
func (a *accessLog) record(off, n, size int64) {
	if n <= 0 {
		return
	}
	first, last := off/accessBlock, (off+n-1)/accessBlock
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = make([]uint64, (size/accessBlock+64)/64)
	}
	for b := first; b <= last; b++ {
		if a.seen[b/64]&(1<<(b%64)) != 0 {
			continue
		}
		a.seen[b/64] |= 1 << (b % 64)
		start := b * accessBlock
		if k := len(a.runs) - 1; k >= 0 && a.runs[k].Off+a.runs[k].Len == start {
			a.runs[k].Len += accessBlock
		} else {
			a.runs = append(a.runs, imagefmt.Range{Off: start, Len: accessBlock})
		}
	}
}

// Accessed returns the byte ranges of the image readers have asked for
// since it was opened, in 4 KiB blocks, in the order of their first read.
// Prefetch and fill do not count.
func (im *Image) Accessed() []imagefmt.Range {
	im.access.mu.Lock()
	defer im.access.mu.Unlock()
	return slices.Clone(im.access.runs)
}
