package fetcher_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// hostState returns the breaker of host among the image's hosts.
func hostState(t *testing.T, im *fetcher.Image, host string) fetcher.HostStats {
	t.Helper()
	for _, h := range im.Stats().Hosts {
		if h.Host == host {
			return h
		}
	}
	t.Fatalf("no breaker for %s in %+v", host, im.Stats().Hosts)
	return fetcher.HostStats{}
}

// TestStalledRegistryFailsFast: a registry that stops answering mid-read
// fails the read in flight within its deadline; once the host's breaker
// is open, a read of another uncached chunk fails at once, without a
// request, while cached chunks are still served; when the registry
// answers again, the next read after the breaker's backoff probes it,
// succeeds, and closes the breaker — same image, no reopen.
func TestStalledRegistryFailsFast(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 2<<20)
	var stalled atomic.Bool
	var sent atomic.Int64
	proxy := testutil.FaultProxy(t, host, func(int64, *http.Request) testutil.Fault {
		sent.Add(1)
		if stalled.Load() {
			return testutil.Hang
		}
		return testutil.Pass
	})
	im := openImage(t, viaProxy(t, loc, proxy), fetcher.WithCache(newCache(t, 64<<20, 1)), fast,
		fetcher.WithConnections(1, 1)) // one request at a time: no readahead races the assertions
	cs := int64(im.Index().ChunkSize)
	read := func(chunk int64) error {
		p := make([]byte, 4096)
		off := chunk*cs + 100
		_, err := im.ReadAt(context.Background(), p, off)
		if err == nil && !bytes.Equal(p, want[off:off+4096]) {
			t.Fatalf("chunk %d: wrong bytes", chunk)
		}
		return err
	}
	if err := read(2); err != nil {
		t.Fatal(err)
	}
	stalled.Store(true)

	start := time.Now()
	err := read(10)
	took := time.Since(start)
	if err == nil {
		t.Fatal("a read from a stalled registry succeeded")
	}
	t.Logf("first read failed after %v: %v", took.Round(time.Millisecond), err)
	st := hostState(t, im, proxy)
	if st.State != fetcher.BreakerOpen || st.Opened != 1 {
		t.Fatalf("after a read that timed out %d attempts the breaker is %+v, want open once", 4, st)
	}

	before := sent.Load()
	err = read(20)
	if !errors.Is(err, fetcher.ErrHostDown) {
		t.Fatalf("read of another chunk with the breaker open: %v, want ErrHostDown", err)
	}
	if n := sent.Load() - before; n != 0 {
		t.Errorf("the refused read sent %d requests to the registry", n)
	}
	if st := hostState(t, im, proxy); st.FailedFast == 0 || st.LastError == "" {
		t.Errorf("breaker %+v: want the refused read counted and the error that opened it", st)
	}
	if err := read(2); err != nil {
		t.Errorf("a cached chunk with the registry down: %v", err)
	}

	stalled.Store(false)
	if err := im.WaitHosts(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := read(20); err != nil {
		t.Fatalf("after the registry came back and the backoff passed: %v (%+v)", err, im.Stats().Hosts)
	}
	if st := hostState(t, im, proxy); st.State != fetcher.BreakerClosed || st.LastError != "" {
		t.Errorf("after a probe that succeeded the breaker is %+v, want closed", st)
	}
	if err := read(30); err != nil {
		t.Errorf("a read after the breaker closed: %v", err)
	}
}

// TestBreakerIgnoresBursts: failures that come together (every
// connection reset at once, a registry restarting) do not open the
// breaker when they span less than a second: retries take them, and every
// read succeeds.
func TestBreakerIgnoresBursts(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/img:v1", 4<<20)
	proxy := testutil.FaultProxy(t, host, func(n int64, _ *http.Request) testutil.Fault {
		if n < 3 { // the first three, within a few 100 ms of backoff
			return testutil.Status503
		}
		return testutil.Pass
	})
	im := openImage(t, viaProxy(t, loc, proxy), fast)
	readRandom(t, im, want, 21, 40)
	if st := hostState(t, im, proxy); st.Opened != 0 || st.FailedFast != 0 {
		t.Errorf("a burst of failures opened the breaker: %+v", st)
	}
}
