package fetcher_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestRunBuffersReused: a cold sequential read with a cache fetches its
// runs into recycled buffers, so it allocates far fewer bytes than it
// reads (a buffer per run allocated the whole image again), and every
// byte is still right. The registry runs in its own process
// (docker-registry), so only the fetcher's allocations are counted. Under
// -race sync.Pool drops a quarter of what it is given: there the bound is
// three quarters of the image (the old code allocated all of it).
func TestRunBuffersReused(t *testing.T) {
	const size = 64 << 20
	loc, want := testutil.BlockImage(t, testutil.DockerRegistry(t)+"/img:v1", size, imagefmt.WithChunkSize(1<<20))
	im := openImage(t, loc, fetcher.WithCache(newCache(t, 2*size, 1)),
		fetcher.WithMaxCoalesce(4<<20), fetcher.WithMemory(8<<20))
	p := make([]byte, 256<<10)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for off := int64(0); off < int64(len(want)); off += int64(len(p)) {
		n, err := im.ReadAt(context.Background(), p, off)
		if n == 0 || !bytes.Equal(p[:n], want[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d) = %d, %v: wrong bytes", off, n, err)
		}
	}
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	if st := im.Stats(); st.BytesFetched < size {
		t.Fatalf("fetched %d bytes; want the whole image read cold", st.BytesFetched)
	}
	bound := uint64(len(want)) / 2
	if testutil.Race {
		bound = uint64(len(want)) * 3 / 4
	}
	if allocated > bound {
		t.Errorf("a cold read of %d MiB allocated %d MiB; want run buffers reused (at most %d MiB)",
			len(want)>>20, allocated>>20, bound>>20)
	}
	t.Logf("read %d MiB, allocated %d MiB", len(want)>>20, allocated>>20)
}
