package fetcher_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

func openImage(t testing.TB, loc fetcher.Location, opts ...fetcher.Option) *fetcher.Image {
	t.Helper()
	im, err := fetcher.Open(context.Background(), loc, opts...)
	if err != nil {
		t.Fatalf("open %s: %v", loc, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

func newCache(t testing.TB, capacity int64, stripes int) *cache.Store {
	t.Helper()
	var dirs []string
	for range stripes {
		dirs = append(dirs, t.TempDir())
	}
	c, err := cache.Open(dirs, capacity)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readRandom does n reads of random offsets and lengths and compares each
// with the image's true bytes.
func readRandom(t *testing.T, im *fetcher.Image, want []byte, seed uint64, n int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for range n {
		off := r.Int64N(int64(len(want)))
		ln := 1 + r.IntN(300<<10)
		p := make([]byte, ln)
		got, err := im.ReadAt(context.Background(), p, off)
		wantN := min(ln, len(want)-int(off))
		if got != wantN || (err != nil && got == ln) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v; want %d bytes", off, ln, got, err, wantN)
		}
		if !bytes.Equal(p[:got], want[off:off+int64(got)]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", off, ln)
		}
	}
}

// TestReadsMatchImage: random reads through each real registry return
// exactly the image's bytes, with and without a cache.
func TestReadsMatchImage(t *testing.T) {
	for _, reg := range testutil.Registries {
		t.Run(reg.Name, func(t *testing.T) {
			loc, want := testutil.BlockImage(t, reg.Start(t)+"/img:v1", 3<<20)
			readRandom(t, openImage(t, loc), want, 1, 200)
			c := newCache(t, 64<<20, 2)
			im := openImage(t, loc, fetcher.WithCache(c))
			readRandom(t, im, want, 2, 200)
			readRandom(t, im, want, 2, 200) // same reads again: now from the cache
			if st := im.Stats(); st.Hits == 0 || st.BytesFetched == 0 || st.DecodeSeconds <= 0 || st.DecodeWaitSeconds <= 0 {
				t.Errorf("stats %+v: want cache hits, fetched bytes and time spent decoding", st)
			}
		})
	}
}

// TestSequentialCoalesces: a sequential reader is served by few large
// range requests, not one per chunk.
func TestSequentialCoalesces(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 4<<20)
	im := openImage(t, loc, fetcher.WithCache(newCache(t, 64<<20, 1)), fetcher.WithMaxCoalesce(1<<20))
	p := make([]byte, 128<<10)
	for off := int64(0); off < int64(len(want)); off += int64(len(p)) {
		n, _ := im.ReadAt(context.Background(), p, off)
		if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
			t.Fatalf("wrong bytes at %d", off)
		}
	}
	st := im.Stats()
	chunks := len(im.Index().Chunks)
	if st.Requests*4 > int64(chunks) {
		t.Errorf("%d requests for %d chunks read sequentially: not coalesced", st.Requests, chunks)
	}
}

// TestSequentialWithoutCache: without a cache, a reader reading each
// chunk in small pieces, as a block device does, gets every chunk from one
// fetch (the recent chunks are held in memory), readahead's included;
// with a memory bound smaller than a chunk, reads are still right.
func TestSequentialWithoutCache(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 4<<20)
	read := func(im *fetcher.Image) {
		t.Helper()
		p := make([]byte, 16<<10)
		for off := int64(0); off < int64(len(want)); off += int64(len(p)) {
			n, _ := im.ReadAt(context.Background(), p, off)
			if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
	}
	im := openImage(t, loc)
	read(im)
	// Every stored byte once; a chunk identical to an earlier one (stored
	// once) may come again with a later run.
	var perChunk int64
	for _, c := range im.Index().Chunks {
		perChunk += int64(c.Length)
	}
	if st, stored := im.Stats(), int64(im.Index().StoredSize()); st.BytesFetched < stored || st.BytesFetched > perChunk {
		t.Errorf("fetched %d bytes for an image of %d stored bytes (%d counting each chunk), read once in order",
			st.BytesFetched, stored, perChunk)
	}
	read(openImage(t, loc, fetcher.WithMemory(16<<10)))
}

// TestConcurrentReaders: 64 readers at once (run under -race).
func TestConcurrentReaders(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 3<<20)
	im := openImage(t, loc, fetcher.WithCache(newCache(t, 2<<20, 3)))
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			readRandom(t, im, want, uint64(g), 20)
		}()
	}
	wg.Wait()
}

// TestFillThenOffline: after Fill the image reads completely from the
// cache, with the registry gone.
func TestFillThenOffline(t *testing.T) {
	host, stop := testutil.StoppableRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	c := newCache(t, 64<<20, 2)
	im := openImage(t, loc, fetcher.WithCache(c), fetcher.WithFillRate(512<<20))
	if err := im.Fill(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !im.Complete() {
		t.Fatal("not complete after Fill")
	}
	stop()
	fetched := im.Stats().BytesFetched
	readRandom(t, im, want, 3, 100)
	if im.Stats().BytesFetched != fetched {
		t.Error("reads after a complete fill went to the registry")
	}
}

// TestRestartReusesCache: a new process (new cache handle, new image)
// reuses the chunks on disk, and a chunk corrupted on disk in between is
// detected, refetched and served correctly.
func TestRestartReusesCache(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 2<<20)
	dirs := []string{t.TempDir(), t.TempDir()}
	c1, err := cache.Open(dirs, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	im1 := openImage(t, loc, fetcher.WithCache(c1))
	if err := im1.Fill(context.Background()); err != nil {
		t.Fatal(err)
	}
	victim := im1.Index().Chunks[5]
	files, _ := filepath.Glob(filepath.Join(dirs[int(victim.Digest[0])%2], "chunks", "*", cache.Digest(victim.Digest).String()))
	if len(files) != 1 {
		t.Fatalf("chunk file not found: %v", files)
	}
	if err := os.WriteFile(files[0], bytes.Repeat([]byte("x"), im1.Index().ChunkLen(5)), 0o600); err != nil { // same size, wrong bytes
		t.Fatal(err)
	}

	c2, err := cache.Open(dirs, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	im2 := openImage(t, loc, fetcher.WithCache(c2))
	p := make([]byte, len(want))
	if _, err := im2.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("read after restart: %v", err)
	}
	st := im2.Stats()
	if st.Requests != 1 || st.BytesFetched != int64(victim.Length) {
		t.Errorf("after restart fetched %d bytes in %d requests; want only the corrupted chunk (%d bytes)", st.BytesFetched, st.Requests, victim.Length)
	}
}

// TestCloseKeepsFetchedChunks: everything a read fetched is in the cache
// once Close returns, so the next open of the image fetches nothing.
func TestCloseKeepsFetchedChunks(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 8<<20)
	c := newCache(t, 64<<20, 2)
	im, err := fetcher.Open(context.Background(), loc, fetcher.WithCache(c))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(want))
	if _, err := im.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("cold read: %v", err)
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	im2 := openImage(t, loc, fetcher.WithCache(c))
	if _, err := im2.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("warm read: %v", err)
	}
	if st := im2.Stats(); st.Requests != 0 {
		t.Errorf("warm read after Close made %d requests", st.Requests)
	}
}

// TestReadSoonChunksStayInMemory: the chunks a reader is about to read (a
// trace's prefetch, readahead ahead of a sequential reader, a scattered
// reader's miss, which it comes back to) are written to the cache through
// the page cache, so those reads come from memory instead of reading back
// from the disk what was just written; the chunk a sequential reader is in
// (it takes the rest from the fetch's memory) and the fill's chunks, which
// nobody is about to read, go around it (O_DIRECT).
func TestReadSoonChunksStayInMemory(t *testing.T) {
	dir := t.TempDir()
	if probe, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_CREATE|os.O_WRONLY|unix.O_DIRECT, 0o600); err != nil {
		if testutil.InCI() {
			t.Fatalf("CI's temp directory must take O_DIRECT: %v", err)
		}
		t.Skipf("the temp directory's filesystem refuses O_DIRECT: %v", err)
	} else {
		probe.Close()
	}
	loc, _ := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 8<<20, imagefmt.WithChunkSize(1<<20))
	c, err := cache.Open([]string{dir}, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	cachedPages := func() map[string][2]uint64 { // chunk file -> pages cached, pages
		files, _ := filepath.Glob(filepath.Join(dir, "chunks", "*", "*"))
		m := map[string][2]uint64{}
		for _, name := range files {
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Cachestat_t
			fi, _ := f.Stat()
			err = unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0)
			f.Close()
			if err != nil {
				t.Fatalf("cachestat %s: %v", name, err)
			}
			m[name] = [2]uint64{st.Cache, uint64(fi.Size()+4095) / 4096}
		}
		return m
	}
	// Each step closes its image, which waits for its cache writes, so
	// every write happens with the reader where the step left it.
	var im *fetcher.Image
	step := func(read func()) {
		im, err = fetcher.Open(context.Background(), loc, fetcher.WithCache(c))
		if err != nil {
			t.Fatal(err)
		}
		read()
		im.Close()
	}
	readIn := func(i int) {
		if _, err := im.ReadAt(context.Background(), make([]byte, 4096), int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	// A trace's prefetch (it returns once its chunks are written); 0 is
	// also where the sequential reader starts, 5, 7 and 8 the neighbours
	// of the scattered miss below, cached so that it fetches none of them.
	step(func() {
		if err := im.Prefetch(context.Background(), []int{0, 5, 7, 8}); err != nil {
			t.Fatal(err)
		}
	})
	// A sequential reader: 0 (cached), then 1, which starts readahead of
	// 1..3 and waits for it.
	step(func() { readIn(0); readIn(1) })
	// A scattered miss in 6.
	step(func() { readIn(6) })
	file := func(i int) string {
		d := cache.Digest(im.Index().Chunks[i].Digest).String()
		return filepath.Join(dir, "chunks", d[:2], d)
	}
	soon := cachedPages()
	want := map[int]string{0: "all", 1: "none", 2: "all", 3: "all", 5: "all", 6: "all", 7: "all", 8: "all"}
	if len(soon) != len(want) {
		t.Fatalf("the reads cached %d chunk files, want %d", len(soon), len(want))
	}
	for i, w := range want {
		p, ok := soon[file(i)]
		if !ok {
			t.Fatalf("chunk %d not cached", i)
		}
		if (w == "none" && p[0] != 0) || (w == "all" && p[0] != p[1]) {
			t.Errorf("chunk %d: %d of %d pages in the page cache after its write, want %s", i, p[0], p[1], w)
		}
	}
	im = openImage(t, loc, fetcher.WithCache(c))
	if err := im.Fill(context.Background()); err != nil {
		t.Fatal(err)
	}
	filled := 0
	for name, p := range cachedPages() {
		if _, ok := soon[name]; ok {
			continue
		}
		filled++
		if p[0] != 0 {
			t.Errorf("chunk %s, filled: %d of %d pages in the page cache after its write", filepath.Base(name), p[0], p[1])
		}
	}
	if filled == 0 {
		t.Fatal("the fill cached nothing")
	}
}

// TestScatteredMissFetchesNeighbours: a demand miss outside a sequential
// run also fetches, below demand, the two chunks after it in one range
// and the one before (a start-up's reads cluster): the registry sees that
// range before anyone reads them, each neighbour is fetched once, and
// nothing beyond them.
func TestScatteredMissFetchesNeighbours(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	_, want := testutil.BlockImage(t, host+"/img:v1", 3<<20)
	var mu sync.Mutex
	var ranges [][2]uint64 // every range request, [from, to]
	proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
		var from, to uint64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err == nil {
			mu.Lock()
			ranges = append(ranges, [2]uint64{from, to})
			mu.Unlock()
		}
		return testutil.Pass
	})
	loc, err := fetcher.ParseLocation(proxy+"/img:v1", true)
	if err != nil {
		t.Fatal(err)
	}
	c := newCache(t, 64<<20, 1)
	im := openImage(t, loc, fetcher.WithCache(c))
	x := im.Index()
	count := map[[32]byte]int{}
	for _, ch := range x.Chunks {
		count[ch.Digest]++
	}
	unique := func(j int) bool { // stored, and no other chunk has its bytes
		return x.Chunks[j].Encoding != imagefmt.EncodingHole && count[x.Chunks[j].Digest] == 1
	}
	k := -1
	for i := 2; i+3 < len(x.Chunks) && k < 0; i++ {
		if unique(i-2) && unique(i-1) && unique(i) && unique(i+1) && unique(i+2) && unique(i+3) {
			k = i
		}
	}
	if k < 0 {
		t.Fatal("the test image has no six unique stored chunks in a row")
	}
	// k first; then its neighbours, in an order no reader would call
	// sequential (which would start readahead).
	for _, j := range []int{k, k + 2, k - 1, k + 1} {
		off := int64(j)*int64(x.ChunkSize) + 100
		p := make([]byte, 1)
		if _, err := im.ReadAt(context.Background(), p, off); err != nil || p[0] != want[off] {
			t.Fatalf("ReadAt(%d) = %v, %v", off, p, err)
		}
	}
	from, to := x.Chunks[k+1].Offset, x.Chunks[k+2].Offset+uint64(x.Chunks[k+2].Length)-1
	mu.Lock()
	together := false
	for _, r := range ranges {
		together = together || (r[0] <= from && r[1] >= to)
	}
	mu.Unlock()
	if !together {
		t.Errorf("no request fetched chunks %d and %d together (ranges %v): the miss at %d did not fetch its neighbours", k+1, k+2, ranges, k)
	}
	var stored int64
	for j := k - 1; j <= k+2; j++ {
		stored += int64(x.Chunks[j].Length)
	}
	if got := im.Stats().BytesFetched; got != stored {
		t.Errorf("fetched %d bytes, want the %d of chunks %d..%d: each once, nothing else", got, stored, k-1, k+2)
	}
	for _, j := range []int{k - 2, k + 3} {
		if c.Has(cache.Digest(x.Chunks[j].Digest)) {
			t.Errorf("chunk %d, beyond the neighbours of %d, was fetched", j, k)
		}
	}
}

// TestSequentialAfterScattered: a sequential read that comes after a
// scattered phase — a model server loading its weights after importing
// its framework, on the same mount — is read ahead as on a fresh image.
// The scattered phase includes a sequential run further on in the image
// (a start-up reading metadata at the image's end), whose readahead
// frontier once stopped every later run before it from reading ahead: one
// round trip per read, half the speed. Asserted on the readahead counter:
// the chunks fetched ahead of the reader during the sequential read.
func TestSequentialAfterScattered(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 8<<20)
	sequential := func(im *fetcher.Image, from, to int64) (readahead int64) {
		t.Helper()
		before := im.Stats().Readahead
		p := make([]byte, 128<<10)
		for off := from; off < to; off += int64(len(p)) {
			n, _ := im.ReadAt(context.Background(), p, off)
			if !bytes.Equal(p[:n], want[off:off+int64(n)]) {
				t.Fatalf("wrong bytes at %d", off)
			}
		}
		return im.Stats().Readahead - before
	}
	opts := []fetcher.Option{fetcher.WithMaxCoalesce(1 << 20), fetcher.WithConnections(8, 1)}
	fresh := sequential(openImage(t, loc, append(opts, fetcher.WithCache(newCache(t, 64<<20, 1)))...), 0, 4<<20)

	im := openImage(t, loc, append(opts, fetcher.WithCache(newCache(t, 64<<20, 1)))...)
	sequential(im, 7<<20, 8<<20) // a run further on, in random.bin
	for _, off := range []int64{5 << 20, 6<<20 + 4096, 4<<20 + 8192} {
		if _, err := im.ReadAt(context.Background(), make([]byte, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	after := sequential(im, 0, 4<<20)
	t.Logf("4 MiB read in order: %d chunks read ahead on a fresh image, %d after the scattered phase", fresh, after)
	// Fewer than fresh: the scattered phase cached some chunks ahead.
	if after < fresh/2 {
		t.Errorf("after a scattered phase %d chunks were read ahead of a sequential reader, on a fresh image %d", after, fresh)
	}
}
