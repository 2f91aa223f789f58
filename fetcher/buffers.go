package fetcher

import (
	"context"
	"errors"
	"math/bits"
	"sync"
	"time"
)

// runBuffers recycles the buffers runs are fetched into, in power-of-two
// size classes (runs of 4 MiB chunks are 4 or 8 MiB, exactly a class). A
// fresh buffer per run cost the kernel new zeroed pages and Go a clear of
// every byte: measured, lazyblk cat of a 1 GiB image from docker-registry
// on loopback, 3.4–3.8 s against 2.9–3.4 s pooled, ~0.6 s less CPU. How
// many buffers are in use is bounded by the memory budget (a run holds its
// bytes from request until cached); idle ones go at the next collections.
type runBuffers struct{ classes [bits.UintSize + 1]sync.Pool }

// get returns a buffer of n bytes, its contents undefined.
func (rb *runBuffers) get(n int) *[]byte {
	class := bits.Len(uint(max(n, 1) - 1)) // 1<<class >= n
	if b, ok := rb.classes[class].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<class)
	return &b
}

// put gives back a buffer get returned, for reuse.
func (rb *runBuffers) put(b *[]byte) {
	rb.classes[bits.Len(uint(cap(*b)-1))].Put(b)
}

// A call's chunks live in its run's buffer (raw chunks are verified in
// place), which goes back to the pool once nobody can read them: the
// fetch holds a reference until its run has left inflight, and every
// reader that joins the call holds one until it has copied its bytes.

// hold adds a reader of cl's chunks. Callers hold im.mu and found cl in
// inflight, where its fetch's own reference keeps the count above zero.
func (cl *call) hold() { cl.refs.Add(1) }

// release ends a use of cl's chunks; the last gives the buffer back.
func (cl *call) release(rb *runBuffers) {
	if cl.refs.Add(-1) == 0 && cl.buf != nil {
		rb.put(cl.buf)
	}
}

// await waits for cl, which the caller holds (see join), to deliver
// chunk i, copies it into p from within and lets cl go. again says the
// read must start over: cl was a prefetch that was stopped.
func (im *Image) await(ctx context.Context, cl *call, i int, p []byte, within int64, start time.Time) (again bool, err error) {
	defer cl.release(&im.bufs)
	select {
	case <-cl.done:
	case <-ctx.Done():
		im.stats.fromOrigin.observe(time.Since(start))
		return false, ctx.Err()
	}
	if cl.mirror {
		im.stats.fromMirror.observe(time.Since(start))
	} else {
		im.stats.fromOrigin.observe(time.Since(start))
	}
	err = cl.errs[i]
	if cl.background && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return true, nil // the prefetch was stopped, not this read: fetch on demand
	}
	if err != nil {
		return false, err
	}
	copy(p, cl.chunks[i][within:])
	return false, nil
}
