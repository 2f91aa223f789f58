package fetcher

import (
	"container/list"
	"sync"
)

// recent holds the last chunks fetched, decoded and verified, for an
// image opened without a cache, up to a byte bound: without it nothing
// kept a fetched chunk past the readers waiting on its fetch, so every
// later read of the same chunk fetched it again — a block device reading
// a 4 MiB chunk 128 KiB at a time fetched it 32 times, and readahead's
// chunks were thrown away before anyone read them (measured: `lazyblk
// cat` without --cache-dir fetched 5 times the image). A plain LRU: what
// a sequential reader needs is the chunks just fetched ahead of it and
// the one it is in; an admission policy that favours often-used entries
// (ristretto's) would turn away exactly those.
type recent struct {
	mu    sync.Mutex
	limit int
	used  int
	order *list.List            // front: most recently used *recentChunk
	byIdx map[int]*list.Element // chunk index → its element
}

type recentChunk struct {
	i    int
	data []byte
}

func newRecent(limit int) *recent {
	return &recent{limit: limit, order: list.New(), byIdx: map[int]*list.Element{}}
}

// get returns chunk i's bytes, if held, and marks it used.
func (r *recent) get(i int) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	el, ok := r.byIdx[i]
	if !ok {
		return nil, false
	}
	r.order.MoveToFront(el)
	return el.Value.(*recentChunk).data, true
}

// has reports whether chunk i is held, without marking it used.
func (r *recent) has(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.byIdx[i]
	return ok
}

// put holds chunk i's bytes, dropping the least recently used chunks
// beyond the bound. The bytes must not change afterwards.
func (r *recent) put(i int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if el, ok := r.byIdx[i]; ok {
		r.order.MoveToFront(el)
		return
	}
	r.byIdx[i] = r.order.PushFront(&recentChunk{i, data})
	r.used += len(data)
	for r.used > r.limit && r.order.Len() > 1 {
		old := r.order.Remove(r.order.Back()).(*recentChunk)
		delete(r.byIdx, old.i)
		r.used -= len(old.data)
	}
}
