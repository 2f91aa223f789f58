package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// The soak's time model: short, so faults cost seconds, not minutes.
const (
	soakAttempt  = 400 * time.Millisecond
	soakDeadline = 5 * time.Second
	// A read slower than this hangs: the read deadline, the kernel's
	// retries of a failed read, the breaker's probe, and scheduling on a
	// loaded 2-core machine.
	soakHang = 4 * soakDeadline
	// soakRSS bounds a serving process's peak RSS (README: 212 MiB reading
	// 10 GiB).
	soakRSS = 256 << 20
)

// soakMount is one mount the soak reads: its files, how it is made, and a
// lock the readers hold while they read and the soak takes to replace a
// killed server.
type soakMount struct {
	name, ref, dir, state string
	files                 map[string][]byte
	names                 []string
	args                  []string // lazyblk mount flags
	daemon                bool     // made by the fetcher daemon
	mu                    sync.RWMutex
	// killed: the soak killed the serving process and has not made the
	// mount again; nbdfuse then fails reads with ENOTCONN or ECONNABORTED (opens with EINVAL), not EIO.
	killed atomic.Bool
}

// soak counts what happened.
type soak struct {
	verified, verifiedBytes, failed, hangs, wrong atomic.Int64
	failedKilled                                  atomic.Int64 // of failed: ENOTCONN, ECONNABORTED or EINVAL while the server was killed
	notEIO                                        atomic.Int64
	otherErrs                                     sync.Map     // failed reads that were not EIO, by error
	wrongs                                        sync.Map     // reads with wrong bytes, by mount, file and the event under way
	lastEvent                                     atomic.Value // string: the event last started, for wrongs
	faults                                        sync.Map     // kind -> *atomic.Int64
	events                                        sync.Map     // kind -> *atomic.Int64
	faulting, stalling                            atomic.Bool
	proxied                                       atomic.Int64 // range requests through the fault proxy
	requests, retries, verifyFailures             atomic.Int64 // summed over serving processes, each before it ended
	peakRSS                                       atomic.Int64
}

func (s *soak) count(m *sync.Map, kind string) {
	v, _ := m.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (s *soak) total(m *sync.Map) (n int64, detail string) {
	var parts []string
	m.Range(func(k, v any) bool {
		c := v.(*atomic.Int64).Load()
		n += c
		parts = append(parts, fmt.Sprintf("%s %d", k, c))
		return true
	})
	return n, strings.Join(parts, ", ")
}

// TestSoak runs several lazy mounts at once under concurrent readers that
// check every byte, while faults arrive at seeded random times: registry
// 503s, resets, stalls past the attempt timeout, truncated and corrupted
// bodies, slow answers; SIGKILL of a serving process (the mount is then
// made again); restarts of the fetcher daemon and of the snapshotter; a
// cache volume filling up; chunk files corrupted and deleted under a live
// mount. It ends with a clean read of everything, a teardown, and the
// invariants: no wrong byte, no hang, every failed read an EIO within the
// deadline, nothing left behind, serving processes within their memory
// bound, counters consistent with the fault proxy's. SOAK (a duration)
// sets how long: `make soak SOAK=10m`; scripts/test.sh runs 2m in CI.
// SOAK_SEED picks the fault schedule (default 1).
func TestSoak(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("SOAK"))
	if err != nil || dur <= 0 {
		t.Fatalf("SOAK=%q: want a duration, like SOAK=2m (make soak)", os.Getenv("SOAK"))
	}
	testutil.Require(t, true, "nbdfuse", "docker-registry")
	seed, _ := strconv.ParseUint(os.Getenv("SOAK_SEED"), 10, 64)
	seed = max(seed, 1)
	s := &soak{}
	rng := rand.New(rand.NewPCG(seed, 2))
	var rngMu sync.Mutex
	roll := func(n int) int { rngMu.Lock(); defer rngMu.Unlock(); return rng.IntN(n) }

	registry := testutil.DockerRegistry(t)
	kinds := []testutil.Fault{testutil.Status503, testutil.Reset, testutil.Truncate, testutil.Flip, testutil.Slow}
	kindName := map[testutil.Fault]string{testutil.Status503: "503", testutil.Reset: "reset", testutil.Truncate: "truncated",
		testutil.Flip: "corrupted", testutil.Slow: "slow", testutil.Hang: "stalled"}
	proxy := testutil.FaultProxy(t, registry, func(_ int64, r *http.Request) testutil.Fault {
		s.proxied.Add(1)
		f := testutil.Pass
		switch {
		case s.stalling.Load():
			f = testutil.Hang
		case s.faulting.Load() && roll(100) < 20:
			f = kinds[roll(len(kinds))]
		}
		if f != testutil.Pass {
			s.count(&s.faults, kindName[f])
		}
		return f
	})

	state := t.TempDir()
	work, err := os.MkdirTemp("", "lzb-soak-") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	e := &mountEnv{host: registry, state: state}
	daemonState := filepath.Join(work, "run")
	fetcherSock, snapSock := filepath.Join(work, "fetcher.sock"), filepath.Join(work, "snap.sock")
	cfg := filepath.Join(work, "fetcher.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[prefetch]\nfill_below = \"0\"\n[registry]\nattempt_timeout = %q\nread_timeout = %q\n",
		soakAttempt, soakDeadline)), 0o600)
	var fetcher, snapshotter *daemon
	startFetcher := func() {
		fetcher = startDaemon(t, "listening on", lazyblk, "fetcher", "--config", cfg, "--root", filepath.Join(work, "lib"),
			"--state", daemonState, "--address", fetcherSock)
	}
	startSnapshotter := func() {
		snapshotter = startDaemon(t, "listening on", lazyblk, "snapshotter", "--root", filepath.Join(work, "snap"),
			"--address", snapSock, "--fetcher-address", fetcherSock)
	}
	startFetcher()
	startSnapshotter()

	// A cache volume that fills up: an 8 MiB tmpfs, the only stripe of m1.
	small := filepath.Join(work, "small")
	os.MkdirAll(small, 0o755)
	testutil.Run(t, "mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small)
	smallMounted := true
	t.Cleanup(func() {
		if smallMounted {
			testutil.Run(t, "umount", "-l", small)
		}
	})

	timeouts := []string{"--attempt-timeout", soakAttempt.String(), "--read-timeout", soakDeadline.String(), "--fill-below", "0"}
	ms := []*soakMount{
		{name: "m0", args: append([]string{"--state-dir", state, "--cache-dir", filepath.Join(work, "cache0")}, timeouts...)},
		{name: "m1", args: append([]string{"--state-dir", state, "--cache-dir", small}, timeouts...)},
		{name: "m2", daemon: true, state: daemonState, args: []string{"--fetcher-address", fetcherSock}},
	}
	for i, m := range ms {
		m.files = soakFiles(uint64(i) + 10*seed)
		for n := range m.files {
			m.names = append(m.names, n)
		}
		m.ref = soakImage(t, registry, proxy, m.name, m.files)
		m.dir = t.TempDir()
		if m.state == "" {
			m.state = state
		}
		soakMountIt(t, m)
	}

	// Goroutines of this process: the registry's, the proxy's, the
	// daemons' log readers; the pushes' idle connections closed.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	goroutines := runtime.NumGoroutine()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, m := range ms {
		for r := range 2 {
			wg.Go(func() { soakReader(s, m, uint64(r)+seed*100, stop) })
		}
	}
	// Reads must reach the block devices, not only the page cache.
	wg.Go(func() {
		for {
			sleepOrStop(2*time.Second, stop)
			select {
			case <-stop:
				return
			default:
				os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
			}
		}
	})

	// The schedule: one event every 0.5-3 s, seeded.
	events := []struct {
		name string
		do   func()
	}{
		{"fault burst", func() { s.faulting.Store(true); sleepOrStop(3*time.Second, stop); s.faulting.Store(false) }},
		{"stall", func() { s.stalling.Store(true); sleepOrStop(3*soakAttempt, stop); s.stalling.Store(false) }},
		{"kill server", func() { soakKill(t, s, ms[roll(2)]) }}, // the host's own mounts: remade after
		{"restart fetcher daemon", func() { fetcher.kill(); startFetcher() }},
		{"restart snapshotter", func() { snapshotter.kill(); startSnapshotter() }},
		{"fill cache volume", func() {
			filler := filepath.Join(small, "filler")
			os.WriteFile(filler, make([]byte, 8<<20), 0o600) // ENOSPC part-way: full
			sleepOrStop(3*time.Second, stop)
			os.Remove(filler)
		}},
		{"corrupt chunk file", func() { soakChunkFile(filepath.Join(work, "cache0"), roll, true) }},
		{"delete chunk file", func() { soakChunkFile(filepath.Join(work, "cache0"), roll, false) }},
	}
	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) && !t.Failed() {
		ev := events[roll(len(events))]
		s.count(&s.events, ev.name)
		s.lastEvent.Store(ev.name)
		ev.do()
		sleepOrStop(time.Duration(500+roll(2500))*time.Millisecond, stop)
	}
	close(stop)
	wg.Wait()
	s.faulting.Store(false)
	s.stalling.Store(false)

	// Faults over: every byte of every mount reads exactly.
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	for _, m := range ms {
		for _, n := range m.names {
			b, err := os.ReadFile(filepath.Join(m.dir, n))
			if err != nil || !bytes.Equal(b, m.files[n]) {
				t.Errorf("%s: final read of %s: %v (exact: %v)", m.name, n, err, bytes.Equal(b, m.files[n]))
				s.wrong.Add(1)
				continue
			}
			s.verified.Add(1)
			s.verifiedBytes.Add(int64(len(b)))
		}
	}
	for _, m := range ms {
		soakCollect(t, s, m)
		if m.daemon {
			soakDaemonUnmount(t, fetcherSock, m.dir)
		} else {
			e.umount(t, m.dir)
		}
	}
	fetcher.stop()
	snapshotter.stop()
	testutil.Run(t, "umount", small)
	smallMounted = false

	// Leaks: the host mounts' state, processes, mounts, loop devices and
	// open files (assertClean), the daemon's mounts, and goroutines.
	leaks := int64(0)
	if !t.Failed() {
		e.assertClean(t)
		(&mountEnv{state: daemonState}).assertClean(t)
		(&mountEnv{state: work}).assertClean(t) // nbdfuse, the small volume's users
	}
	if t.Failed() {
		leaks++
	}
	// The daemons' log readers end with them: two fewer than at the start.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	for end := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > goroutines && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after teardown, %d before:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
		leaks++
	}

	// The kernel's NBD device, in a QEMU guest: SIGKILL and reattach.
	leaks += soakKernel(t, s, seed, min(max(dur/4, 30*time.Second), 5*time.Minute))

	faults, faultDetail := s.total(&s.faults)
	nEvents, eventDetail := s.total(&s.events)
	t.Logf("seed %d, %v: events %d (%s); registry faults %d (%s); %d range requests through the proxy, %d counted by lazyblk "+
		"(%d retried, %d failed verification); %.1f MiB verified; reads failed %d (EIO %d, ENOTCONN or EINVAL of a killed server %d); "+
		"peak RSS of a serving process %.0f MiB",
		seed, dur, nEvents, eventDetail, faults, faultDetail, s.proxied.Load(), s.requests.Load(), s.retries.Load(),
		s.verifyFailures.Load(), float64(s.verifiedBytes.Load())/(1<<20), s.failed.Load(), s.failed.Load()-s.failedKilled.Load()-s.notEIO.Load(),
		s.failedKilled.Load(), float64(s.peakRSS.Load())/(1<<20))
	if s.requests.Load() > s.proxied.Load() {
		t.Errorf("lazyblk counted %d range requests, the proxy saw %d", s.requests.Load(), s.proxied.Load())
	}
	if faults > 20 && s.retries.Load()+s.verifyFailures.Load() == 0 {
		t.Errorf("%d faults injected, but no serving process counted a retry or a verification failure", faults)
	}
	if s.peakRSS.Load() > soakRSS {
		t.Errorf("a serving process peaked at %d MiB RSS, bound %d MiB", s.peakRSS.Load()>>20, soakRSS>>20)
	}
	if s.hangs.Load() > 0 || s.wrong.Load() > 0 || s.notEIO.Load() > 0 {
		_, other := s.total(&s.otherErrs)
		_, wrongs := s.total(&s.wrongs)
		t.Errorf("hangs %d, wrong bytes %d (%s), failed reads that were neither EIO nor the errors of a killed server %d (%s)",
			s.hangs.Load(), s.wrong.Load(), wrongs, s.notEIO.Load(), other)
	}
	fmt.Printf("soak: reads verified %d, faults injected %d, reads failed %d, hangs %d, wrong bytes %d, leaks %d\n",
		s.verified.Load(), faults+nEvents, s.failed.Load(), s.hangs.Load(), s.wrong.Load(), leaks)
}
