package fetcher_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// BenchmarkRead reports, for a 1 GiB image (LAZYBLK_BENCH_MIB overrides)
// with 4 MiB chunks on Debian's docker-registry:
//   - cold/rawGET: a cold sequential read through the fetcher against a
//     raw HTTP GET of its data blob from the same registry (target ≥ 0.9);
//   - warm/file: reading it again from the cache against reading a plain
//     file of the same bytes (target ≥ 0.8).
//
// Run: go test ./fetcher -run '^$' -bench Read -benchtime 1x
func BenchmarkRead(b *testing.B) {
	mib := 1024
	if v, err := strconv.Atoi(os.Getenv("LAZYBLK_BENCH_MIB")); err == nil {
		mib = v
	}
	host := testutil.DockerRegistry(b)
	loc, want := testutil.BlockImage(b, host+"/bench:v1", mib<<20, imagefmt.WithChunkSize(imagefmt.DefaultChunkSize))
	plain := filepath.Join(b.TempDir(), "plain")
	if err := os.WriteFile(plain, want, 0o600); err != nil {
		b.Fatal(err)
	}
	size := float64(len(want))
	for b.Loop() {
		im := openImage(b, loc)
		dataURL := "http://" + host + "/v2/bench/blobs/" + im.Index().Data.String()
		im.Close()

		raw := timeIt(b, func() error {
			resp, err := http.Get(dataURL)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.Copy(io.Discard, resp.Body)
			return err
		})
		c := benchCache(b, int64(len(want))*2)
		im = openImage(b, loc, fetcher.WithCache(c))
		cold := timeIt(b, func() error { return readSequential(im, len(want)) })
		im.Close() // waits for the last cache writes: warm means the cache is complete
		im = openImage(b, loc, fetcher.WithCache(c))
		warm := timeIt(b, func() error { return readSequential(im, len(want)) })
		f, err := os.Open(plain)
		if err != nil {
			b.Fatal(err)
		}
		file := timeIt(b, func() error {
			p := make([]byte, 1<<20)
			for off := int64(0); off < int64(len(want)); off += int64(len(p)) {
				if _, err := f.ReadAt(p, off); err != nil && err != io.EOF {
					return err
				}
			}
			return nil
		})
		f.Close()
		im.Close()
		dataSize := float64(im.Index().DataSize)
		b.ReportMetric((size/cold.Seconds())/(dataSize/raw.Seconds()), "cold/rawGET")
		b.ReportMetric(file.Seconds()/warm.Seconds(), "warm/file")
		b.ReportMetric(size/cold.Seconds()/1e6, "coldMB/s")
		b.ReportMetric(dataSize/raw.Seconds()/1e6, "rawGetMB/s")
	}
}

// benchCache puts the cache in LAZYBLK_BENCH_CACHE_DIR (e.g. /dev/shm, to
// measure the fetcher rather than the disk) or a temp dir.
func benchCache(b *testing.B, capacity int64) *cache.Store {
	dir := os.Getenv("LAZYBLK_BENCH_CACHE_DIR")
	if dir == "" {
		return newCache(b, capacity, 1)
	}
	d, err := os.MkdirTemp(dir, "lazyblk-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	c, err := cache.Open([]string{d}, capacity)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func readSequential(im *fetcher.Image, n int) error {
	p := make([]byte, 1<<20)
	for off := int64(0); off < int64(n); off += int64(len(p)) {
		if _, err := im.ReadAt(context.Background(), p, off); err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

func timeIt(b *testing.B, fn func() error) time.Duration {
	start := time.Now()
	if err := fn(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
