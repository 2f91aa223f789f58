package fetcher_test

import (
	"context"
	"os"
	"testing"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestFilesAllOrNothing: Files over a range whose second chunk is not
// cached hands out no file and counts no cache hit; once both are cached
// it hands out both, but asked "now" before their first read since the
// cache was opened, neither (they are not checked yet).
func TestFilesAllOrNothing(t *testing.T) {
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 2<<20)
	dir := t.TempDir()
	openAll := func() (*cache.Store, *fetcher.Image) {
		store, err := cache.Open([]string{dir}, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		return store, openImage(t, loc, fetcher.WithCache(store))
	}
	store, im := openAll()
	x := im.Index()
	cs := int64(x.ChunkSize)
	data := dataChunks(x)
	i := -1 // a chunk followed by another with data
	for k := range data[:len(data)-1] {
		if data[k+1] == data[k]+1 {
			i = data[k]
			break
		}
	}
	put := func(j int) {
		t.Helper()
		if err := store.Put(context.Background(), cache.Digest(x.Chunks[j].Digest), want[int64(j)*cs:int64(j)*cs+int64(x.ChunkLen(j))]); err != nil {
			t.Fatal(err)
		}
	}
	files := 0
	add := func(*os.File, int64, int) { files++ }

	put(i)
	if _, ok := im.Files(int64(i)*cs, int(2*cs), false, add); ok || files != 0 || store.Stats().Hits != 0 {
		t.Errorf("Files over a cached and a missing chunk: ok %v, %d files handed out, %d cache hits; want none", ok, files, store.Stats().Hits)
	}
	put(i + 1)

	_, im = openAll() // a new process: nothing checked yet
	if _, ok := im.Files(int64(i)*cs, int(2*cs), true, add); ok || files != 0 {
		t.Errorf("Files now, chunks not checked since the cache was opened: ok %v, %d files", ok, files)
	}
	release, ok := im.Files(int64(i)*cs, int(2*cs), false, add)
	if !ok || files != 2 {
		t.Fatalf("Files over two cached chunks: ok %v, %d files, want 2", ok, files)
	}
	release()
	if release, ok = im.Files(int64(i)*cs, int(2*cs), true, add); !ok || files != 4 {
		t.Fatalf("Files now, both chunks checked: ok %v, %d files in all, want 4", ok, files)
	}
	release()
}
