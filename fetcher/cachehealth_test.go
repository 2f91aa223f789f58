package fetcher_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestCacheCannotStore: a cache whose only volume is full (a 16 MiB tmpfs
// filled by another file: ENOSPC), or remounted read-only (EROFS), never
// fails a read. Every byte of the image reads exactly from the fetched
// bytes; the failures are counted and logged once (within the minute); once space returns,
// the cache stores again.
func TestCacheCannotStore(t *testing.T) {
	testutil.Require(t, true) // mounts a tmpfs
	vol := t.TempDir()
	testutil.Run(t, "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", vol)
	t.Cleanup(func() { testutil.Run(t, "umount", vol) })
	c, err := cache.Open([]string{filepath.Join(vol, "cache")}, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(vol, "filler") // fills the volume
	os.WriteFile(filler, make([]byte, 16<<20), 0o600)
	if err := os.WriteFile(filepath.Join(vol, "one-more"), []byte{1}, 0o600); err == nil {
		t.Fatal("the volume is not full")
	}
	var logs bytes.Buffer
	loc, want := testutil.BlockImage(t, testutil.GGCRRegistry(t)+"/img:v1", 6<<20)
	im := openImage(t, loc, fetcher.WithCache(c), fetcher.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))

	half := len(want) / 2
	got := make([]byte, half)
	if n, err := im.ReadAt(context.Background(), got, 0); n != half || err != nil || !bytes.Equal(got, want[:half]) {
		t.Fatalf("read of a full cache's image: %d bytes, %v (bytes equal: %v)", n, err, bytes.Equal(got, want[:half]))
	}
	im.Close() // waits for the cache writes
	st := im.Stats()
	if st.CacheWriteFailures == 0 {
		t.Fatalf("stats %+v: no cache write failure counted on a full volume", st)
	}
	if n := strings.Count(logs.String(), "cannot store"); n != 1 {
		t.Errorf("the full cache was logged %d times, want once:\n%s", n, logs.String())
	}

	// Read-only: the same.
	os.Remove(filler)
	testutil.Run(t, "mount", "-o", "remount,ro", vol)
	logs.Reset()
	im = openImage(t, loc, fetcher.WithCache(c), fetcher.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	readAll(t, im, want)
	im.Close()
	if st := im.Stats(); st.CacheWriteFailures == 0 || strings.Count(logs.String(), "cannot store") != 1 {
		t.Errorf("read-only volume: %d write failures, logged %d times; want some, once", st.CacheWriteFailures, strings.Count(logs.String(), "cannot store"))
	}
	testutil.Run(t, "mount", "-o", "remount,rw", vol)

	// Space returns: the same image opened again caches what it reads.
	logs.Reset()
	im = openImage(t, loc, fetcher.WithCache(c), fetcher.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	readAll(t, im, want)
	im.Close()
	if st := im.Stats(); st.CacheWriteFailures != 0 || c.Stats().Used == 0 {
		t.Errorf("after space returned: %d write failures, %d bytes cached; want none and some", st.CacheWriteFailures, c.Stats().Used)
	}
}
