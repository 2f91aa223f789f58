package fetcher_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestMissSplitsOverIdleConnections: one demand miss of a 4 MiB chunk is
// fetched as four ranges at once. The registry's proxy holds every range
// request until four are in: a fetcher that did not split would never
// send the second.
func TestMissSplitsOverIdleConnections(t *testing.T) {
	reg := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, reg+"/img:v1", 8<<20, imagefmt.WithChunkSize(4<<20), imagefmt.WithCompression(imagefmt.CompressionNone))
	target, _ := url.Parse("http://" + reg)
	rp := httputil.NewSingleHostReverseProxy(target)
	var arrived atomic.Int64
	all, once := make(chan struct{}), sync.Once{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			if arrived.Add(1) == 4 {
				once.Do(func() { close(all) })
			}
			select {
			case <-all:
			case <-time.After(10 * time.Second): // a safety net, not synchronisation: the test fails below
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	// One attempt each: a retry would count as another request arriving.
	im := openImage(t, viaProxy(t, loc, strings.TrimPrefix(srv.URL, "http://")), fetcher.WithTimeouts(time.Minute, 1, 2*time.Minute))

	x := im.Index()
	i := -1
	for k, c := range x.Chunks {
		if c.Encoding == imagefmt.EncodingRaw && x.ChunkLen(k) == 4<<20 {
			i = k
			break
		}
	}
	if i < 0 {
		t.Fatal("no full raw chunk in the image")
	}
	off := int64(i) * int64(x.ChunkSize)
	p := make([]byte, 4096)
	if _, err := im.ReadAt(context.Background(), p, off+12345); err != nil || !bytes.Equal(p, want[off+12345:off+12345+4096]) {
		t.Fatalf("read: %v", err)
	}
	select {
	case <-all:
	default:
		t.Fatalf("%d range requests reached the registry together, want 4", arrived.Load())
	}
	if st := im.Stats(); st.Requests != 4 || st.BytesFetched != 4<<20 {
		t.Errorf("one 4 MiB miss: %d requests, %d bytes; want 4 requests for exactly the chunk", st.Requests, st.BytesFetched)
	}
}

// TestConnectionsReused: misses split over several connections find them
// open the next time: the image keeps as many idle as it may use, where
// Go's default transport keeps two and would reconnect (with TLS, a
// handshake) for every burst.
func TestConnectionsReused(t *testing.T) {
	reg := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, reg+"/img:v1", 40<<20, imagefmt.WithChunkSize(4<<20), imagefmt.WithCompression(imagefmt.CompressionNone))
	target, _ := url.Parse("http://" + reg)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	im := openImage(t, viaProxy(t, loc, strings.TrimPrefix(srv.URL, "http://")))
	x := im.Index()
	var full []int
	for k, c := range x.Chunks {
		if c.Encoding == imagefmt.EncodingRaw && x.ChunkLen(k) == 4<<20 {
			full = append(full, k)
		}
	}
	if len(full) < 8 {
		t.Fatalf("%d full raw chunks, want 8", len(full))
	}
	// Every other one, backwards: no reader looks sequential, so each miss
	// is its own split fetch.
	p := make([]byte, 4096)
	before := conns.Load()
	reads := 0
	for k := len(full) - 1; k >= 0; k -= 2 {
		off := int64(full[k]) * int64(x.ChunkSize)
		if _, err := im.ReadAt(context.Background(), p, off); err != nil || !bytes.Equal(p, want[off:off+4096]) {
			t.Fatalf("read chunk %d: %v", full[k], err)
		}
		reads++
	}
	st := im.Stats()
	if st.Requests < int64(2*reads) {
		t.Fatalf("%d requests for %d misses: the misses were not split", st.Requests, reads)
	}
	if opened := conns.Load() - before; opened > 4 {
		t.Errorf("%d split misses (%d requests) opened %d new connections; want at most 4, then reused", reads, st.Requests, opened)
	}
}
