package fetcher_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// viaProxy names the same repository through another host.
func viaProxy(t *testing.T, loc fetcher.Location, proxy string) fetcher.Location {
	t.Helper()
	ref := strings.Replace(loc.String(), loc.Ref.Context().RegistryStr(), proxy, 1)
	l, err := fetcher.ParseLocation(ref, true)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fast keeps fault tests quick: short attempts, a short read deadline.
var fast = fetcher.WithTimeouts(300*time.Millisecond, 4, 3*time.Second)

// TestTransientFaults: every kind of transient failure on the first
// requests is retried away; the reads return exactly the image's bytes.
// A fault hits a third of the requests, never a retry of bytes already
// faulted (a chunk that fails verification twice is, by design, an error:
// TestCorruptNeverServed).
func TestTransientFaults(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	for _, f := range []struct {
		name  string
		fault testutil.Fault
	}{
		{"503", testutil.Status503}, {"reset", testutil.Reset}, {"truncated", testutil.Truncate},
		{"flipped", testutil.Flip}, {"hang", testutil.Hang}, {"latency", testutil.Slow},
	} {
		t.Run(f.name, func(t *testing.T) {
			var seen atomic.Int64
			var mu sync.Mutex
			var faulted [][2]int64 // ranges given a fault
			proxy := testutil.FaultProxy(t, host, func(n int64, r *http.Request) testutil.Fault {
				seen.Add(1)
				var from, to int64
				if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to); err != nil {
					return testutil.Pass
				}
				mu.Lock()
				defer mu.Unlock()
				for _, fr := range faulted {
					if from <= fr[1] && fr[0] <= to {
						return testutil.Pass // a retry: bytes a failed request asked for
					}
				}
				// Every third request fails, and never twice for the same
				// bytes (requests run concurrently: a retry's number may
				// be a multiple of three too).
				if n%3 == 0 {
					faulted = append(faulted, [2]int64{from, to})
					return f.fault
				}
				return testutil.Pass
			})
			c := newCache(t, 64<<20, 1)
			im := openImage(t, viaProxy(t, loc, proxy), fetcher.WithCache(c), fast)
			readRandom(t, im, want, 5, 60)
			st := im.Stats()
			switch f.fault {
			case testutil.Slow:
			case testutil.Flip:
				if st.VerifyFailures == 0 {
					t.Errorf("flipped bytes never failed verification: %+v", st)
				}
			case testutil.Reset:
				// net/http retries an idempotent GET whose connection closed
				// before any response; either layer may absorb it.
				if st.Retries == 0 && seen.Load() <= st.Requests {
					t.Errorf("resets were neither retried nor re-sent: %+v, proxy saw %d", st, seen.Load())
				}
			default:
				if st.Retries == 0 {
					t.Errorf("no retries counted: %+v", st)
				}
			}
		})
	}
}

// TestCorruptNeverServed: a registry that always corrupts one chunk's
// bytes gets a typed error for reads of that chunk — after 3 refetches —
// and the chunk is never cached; the other chunks read fine. Each
// verification failure is one of the read's 4 attempts.
func TestCorruptNeverServed(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	im0 := openImage(t, loc)
	x := im0.Index()
	bad := 3 // a raw chunk of random.bin
	for x.Chunks[bad].Length == 0 {
		bad++
	}
	badRange := rangeHeader(x.Chunks[bad].Offset, x.Chunks[bad].Length)
	proxy := testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
		if r.Header.Get("Range") == badRange {
			return testutil.Flip
		}
		return testutil.Pass
	})
	c := newCache(t, 64<<20, 1)
	im := openImage(t, viaProxy(t, loc, proxy), fetcher.WithCache(c), fast)
	cs := int64(x.ChunkSize)
	p := make([]byte, 100)
	n, err := im.ReadAt(context.Background(), p, int64(bad)*cs+10)
	if !errors.Is(err, fetcher.ErrChunkCorrupt) || n != 0 {
		t.Fatalf("read of the corrupted chunk: n=%d err=%v, want ErrChunkCorrupt", n, err)
	}
	if c.Has(cache.Digest(x.Chunks[bad].Digest)) {
		t.Error("corrupted chunk was cached")
	}
	if st := im.Stats(); st.VerifyFailures != 4 {
		t.Errorf("verify failures %d, want 4 (the fetch and 3 refetches)", st.VerifyFailures)
	}
	next := int64(bad+1) * cs
	if _, err := im.ReadAt(context.Background(), p, next); err != nil || string(p) != string(want[next:next+100]) {
		t.Errorf("neighbouring chunk: %v", err)
	}
}

func rangeHeader(off uint64, n uint32) string {
	return fmt.Sprintf("bytes=%d-%d", off, off+uint64(n)-1)
}

// TestStoppedServerFailsInTime: a registry that stops answering makes a
// read fail once its deadline passes instead of hanging.
func TestStoppedServerFailsInTime(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, _ := testutil.BlockImage(t, host+"/img:v1", 1<<20)
	proxy := testutil.FaultProxy(t, host, func(int64, *http.Request) testutil.Fault { return testutil.Hang })
	im := openImage(t, viaProxy(t, loc, proxy), fetcher.WithTimeouts(100*time.Millisecond, 2, 500*time.Millisecond))
	_, err := im.ReadAt(context.Background(), make([]byte, 10), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read against a hung registry: %v, want a deadline error", err)
	}
}

// TestTokenExpiry: bearer tokens that expire every few requests are
// refreshed by the auth transport; reads never notice.
func TestTokenExpiry(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	proxy, issued := testutil.TokenProxy(t, host, 5)
	im := openImage(t, viaProxy(t, loc, proxy), fast)
	readRandom(t, im, want, 9, 60)
	if issued.Load() < 3 {
		t.Errorf("only %d tokens issued: expiry was not exercised", issued.Load())
	}
}

// TestRedirectToBlobStorage: range reads follow redirects to blob storage
// without credentials; an expired signed URL (403) is re-resolved through
// the registry; errors never show the signature.
func TestRedirectToBlobStorage(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 1<<20)
	proxy, redirects := testutil.RedirectProxy(t, host, 2)
	im := openImage(t, viaProxy(t, loc, proxy), fast)
	readRandom(t, im, want, 11, 30)
	if st := im.Stats(); st.Retries < 2 || redirects.Load() < 3 {
		t.Errorf("stats %+v, %d redirects: want the two expired URLs retried through the registry", st, redirects.Load())
	}

	deny, _ := testutil.RedirectProxy(t, host, 1000)
	im2 := openImage(t, viaProxy(t, loc, deny), fast)
	_, err := im2.ReadAt(context.Background(), make([]byte, 10), 0)
	if err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "403") {
		t.Errorf("always-expired storage: %v; want a 403 error without the signature", err)
	}
}

// TestMirrors: a mirror that serves takes the reads; one that fails, or
// serves corrupt bytes, is passed over for the origin and reads stay exact.
func TestMirrors(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 1<<20)
	for _, c := range []struct {
		name        string
		fault       testutil.Fault
		originReads bool
	}{
		{"serving", testutil.Pass, false},
		{"failing", testutil.Status503, true},
		{"corrupt", testutil.Flip, true},
		{"stalled", testutil.Hang, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var mirrorHits, originHits atomic.Int64
			mirror := testutil.FaultProxy(t, host, func(int64, *http.Request) testutil.Fault {
				mirrorHits.Add(1)
				return c.fault
			})
			origin := testutil.FaultProxy(t, host, func(int64, *http.Request) testutil.Fault {
				originHits.Add(1)
				return testutil.Pass
			})
			im := openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithMirrors("http://"+mirror))
			readRandom(t, im, want, 13, 30)
			if c.fault == testutil.Hang {
				// Reads until the mirror's breaker opens (each by a new
				// image, which holds nothing: every read asks the mirror),
				// then reads by another: they pass the mirror over.
				for seed := uint64(14); hostState(t, im, mirror).State == fetcher.BreakerClosed; seed++ {
					if seed > 64 {
						t.Fatalf("the stalled mirror's breaker did not open: %+v", hostState(t, im, mirror))
					}
					readRandom(t, openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithMirrors("http://"+mirror)), want, seed, 1)
				}
				readRandom(t, openImage(t, viaProxy(t, loc, origin), fast, fetcher.WithMirrors("http://"+mirror)), want, 100, 10)
			}
			if mirrorHits.Load() == 0 {
				t.Error("mirror never asked")
			}
			if got := originHits.Load() > 0; got != c.originReads {
				t.Errorf("origin range reads: %d, want origin used = %v", originHits.Load(), c.originReads)
			}
			if st := im.Stats(); c.fault == testutil.Flip && st.VerifyFailures == 0 {
				t.Errorf("corrupt mirror not detected: %+v", st)
			}
			// A mirror that stalls costs half an attempt until its breaker
			// opens; then reads pass it over at once (it sees a probe now
			// and then).
			if st := hostState(t, im, mirror); c.fault == testutil.Hang && (st.Opened == 0 || st.FailedFast == 0) {
				t.Errorf("stalled mirror's breaker: %+v, want opened and reads passing it over", st)
			} else if c.fault != testutil.Hang && st.Opened != 0 {
				t.Errorf("the breaker of a mirror that answers opened: %+v", st)
			}
			// The read latency is counted under the source that served.
			lat := im.Stats().Latency
			if served := lat[fetcher.SourceMirror].Count > 0; served == c.originReads || (lat[fetcher.SourceOrigin].Count > 0) != c.originReads {
				t.Errorf("latency counted: mirror %d, origin %d; want the %s", lat[fetcher.SourceMirror].Count,
					lat[fetcher.SourceOrigin].Count, map[bool]string{true: "origin", false: "mirror"}[c.originReads])
			}
		})
	}
}
