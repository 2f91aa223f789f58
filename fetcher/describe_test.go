package fetcher_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestMountTimeFaults: the manifest and chunk-index requests of opening
// an image follow the time model of chunk reads. 503s, resets and a
// corrupt index are failed attempts, retried and counted; an index that
// stays corrupt fails after the attempts with a digest mismatch; and
// behind a middlebox that corrupts the first answer to each new range,
// reads still return exact bytes.
func TestMountTimeFaults(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	d, err := fetcher.Describe(context.Background(), loc)
	if err != nil {
		t.Fatal(err)
	}
	isIndex := func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/blobs/"+d.IndexDigest.String()) }
	isManifest := func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }
	// first fails the first n requests that match with fault f.
	first := func(n int64, f testutil.Fault, match func(*http.Request) bool) (func(int64, *http.Request) testutil.Fault, *atomic.Int64) {
		var seen atomic.Int64
		return func(_ int64, r *http.Request) testutil.Fault {
			if match(r) && seen.Add(1) <= n {
				return f
			}
			return testutil.Pass
		}, &seen
	}
	for _, c := range []struct {
		name           string
		n              int64
		fault          testutil.Fault
		match          func(*http.Request) bool
		retries, flips int64
	}{
		{"index 503 three times", 3, testutil.Status503, isIndex, 3, 0},
		{"index stalls twice", 2, testutil.Hang, isIndex, 2, 0},
		{"index truncated", 1, testutil.Truncate, isIndex, 1, 0},
		{"index corrupt", 2, testutil.Flip, isIndex, 2, 2},
		{"manifest 503 three times", 3, testutil.Status503, isManifest, 3, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			decide, seen := first(c.n, c.fault, c.match)
			im := openImage(t, viaProxy(t, loc, testutil.FaultProxyAll(t, host, decide)), fast)
			st := im.Stats()
			if st.Retries != c.retries || st.VerifyFailures != c.flips {
				t.Errorf("retries %d, verification failures %d; want %d and %d", st.Retries, st.VerifyFailures, c.retries, c.flips)
			}
			if got := seen.Load(); got != c.n+1 {
				t.Errorf("%d matching requests, want %d (the faults and one good answer)", got, c.n+1)
			}
			readAll(t, im, want)
		})
	}

	t.Run("index always corrupt", func(t *testing.T) {
		decide, seen := first(1<<30, testutil.Flip, isIndex)
		_, err := fetcher.Open(context.Background(), viaProxy(t, loc, testutil.FaultProxyAll(t, host, decide)), fast)
		if !errors.Is(err, fetcher.ErrDigestMismatch) {
			t.Fatalf("open: %v, want a digest mismatch", err)
		}
		if got := seen.Load(); got != 4 {
			t.Errorf("index fetched %d times, want 4 (the attempts)", got)
		}
	})

	t.Run("middlebox corrupts each new range once", func(t *testing.T) {
		var mu sync.Mutex
		ranges := map[string]bool{}
		proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
			mu.Lock()
			defer mu.Unlock()
			if rg := r.Header.Get("Range"); !ranges[rg] {
				ranges[rg] = true
				return testutil.Flip
			}
			return testutil.Pass
		})
		im := openImage(t, viaProxy(t, loc, proxy), fast)
		readAll(t, im, want)
		if st := im.Stats(); st.VerifyFailures == 0 {
			t.Error("no verification failure counted behind a corrupting middlebox")
		}
	})
}

// readAll reads the whole image through im and compares it with want.
func readAll(t *testing.T, im *fetcher.Image, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if n, err := im.ReadAt(context.Background(), got, 0); n != len(want) || err != nil {
		t.Fatalf("read %d of %d bytes: %v", n, len(want), err)
	}
	if string(got) != string(want) {
		t.Fatal("read bytes differ from the image")
	}
}
