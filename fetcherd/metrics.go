package fetcherd

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/mounts"
)

// scrapeTimeout bounds how long a scrape waits for one mount's serving
// process; a mount that does not answer in time reports lazyblk_mount_up 0.
const scrapeTimeout = 5 * time.Second

// descs are every per-mount family, as metric made them (Describe's list).
var descs []*prometheus.Desc

// metric describes one per-mount series family; the labels after mount
// and ref.
func metric(name, help string, labels ...string) *prometheus.Desc {
	d := prometheus.NewDesc("lazyblk_"+name, help, append([]string{"mount", "ref"}, labels...), nil)
	descs = append(descs, d)
	return d
}

var (
	descUp             = metric("mount_up", "1 when the mount's serving process answered this scrape.")
	descSize           = metric("image_size_bytes", "Size of the mounted block image.")
	descCached         = metric("image_cached_bytes", "Bytes of the image the chunk cache holds (fetched so far and not evicted).")
	descCachedRatio    = metric("image_cached_ratio", "image_cached_bytes / image_size_bytes: 1 once the image is complete.")
	descFetched        = metric("image_fetched_bytes_total", "Bytes fetched from the registry (stored form: compressed chunks count compressed).")
	descHits           = metric("chunk_cache_hits_total", "Chunk reads the cache answered.")
	descMisses         = metric("chunk_cache_misses_total", "Chunk reads the cache could not answer (fetched, or joined a fetch in flight).")
	descRequests       = metric("registry_requests_total", "HTTP range requests sent to the registry.")
	descRetries        = metric("registry_retries_total", "Range requests retried after a failure.")
	descVerify         = metric("verify_failures_total", "Chunks whose sha256 or decompression failed (refetched, then an error).")
	descDecode         = metric("chunk_decode_seconds_total", "CPU time spent decoding and verifying fetched chunks (zstd, sha256).")
	descCacheWriteFail = metric("cache_write_failures_total", "Chunks the cache could not store (a full or broken volume); their reads were served from the fetched bytes.")
	descCacheReadFail  = metric("cache_read_failures_total", "Cache reads that failed (EIO); the chunk was fetched again.")
	descEarly          = metric("chunk_early_reads_total", "Demand reads answered from the pieces they asked for, decoded and verified before the rest of their chunk.")
	descDecodeWait     = metric("chunk_decode_wait_seconds_total", "Time demand reads waited for their chunks to be decoded and verified, after the bytes arrived.")
	descReadSeconds    = metric("chunk_read_seconds", "Latency of chunk reads by source: cache (a hit), mirror or origin (waited for a fetch).", "source")
	descNBDRequests    = metric("nbd_requests_total", "Block device requests (NBD or ublk) of any kind the mount's server answered.")
	descNBDBytes       = metric("nbd_read_bytes_total", "Bytes the mount's NBD server returned to reads.")
	descNBDSpliced     = metric("nbd_read_spliced_bytes_total", "Of nbd_read_bytes_total, bytes sent straight from cached chunk files (splice), not copied through the server.")
	descNBDAtOnce      = metric("nbd_reads_at_once_total", "NBD reads spliced by the connection's own reader, their bytes ready in the page cache (no worker, no wait).")
	descNBDErrors      = metric("nbd_read_errors_total", "NBD reads answered with an error (EIO to the kernel).")
	descInFlight       = metric("nbd_reads_in_flight", "Block device reads (NBD or ublk) being answered now.")
	descStuck          = metric("nbd_reads_stuck", "Block device reads (NBD or ublk) in flight for longer than 10 s (stuck I/O).")
	descOldest         = metric("nbd_oldest_read_seconds", "Age of the oldest block device read (NBD or ublk) in flight (0 when none).")
	descUblkQueue      = metric("ublk_queue_requests_total", "Requests each hardware queue of the mount's ublk device answered.", "queue")
	descPrefetch       = metric("prefetch_phase", "1 for the phase the mount's trace replay and fill are in.", "phase")
	descTraceChunks    = metric("prefetch_trace_chunks", "Chunks in the prefetch trace being replayed (0 without one).")
	descCacheUsed      = metric("cache_used_bytes", "Bytes the chunk cache holds, as the mount's serving process accounts them.")
	descCacheCap       = metric("cache_capacity_bytes", "The chunk cache's capacity.")
	descEvictions      = metric("cache_evictions_total", "Chunks the mount's serving process evicted from the cache.")
	descCorrupt        = metric("cache_corrupt_total", "Cache files found torn or corrupt (removed, refetched).")
	descStripe         = metric("cache_stripe_bytes", "Bytes held per cache stripe (volume).", "stripe")
	descStripeWrites   = metric("cache_stripe_written_bytes_total", "Bytes written per cache stripe since the serving process started.", "stripe")
	descHostState      = metric("registry_host_state", "1 for the state a registry host's breaker is in (closed; open: its reads fail at once; probing).", "host", "state")
	descFailedFast     = metric("registry_failed_fast_total", "Reads a registry host's open breaker failed at once instead of waiting on the host.", "host")
	descHostOpened     = metric("registry_host_opened_total", "Times a registry host's breaker opened (the host failed repeatedly).", "host")
)

// breakerStates are the values of lazyblk_registry_host_state's state label.
var breakerStates = []string{fetcher.BreakerClosed, fetcher.BreakerOpen, fetcher.BreakerProbing}

// phases are the values of lazyblk_prefetch_phase's phase label.
var phases = []string{mounts.PhaseIdle, mounts.PhaseTrace, mounts.PhaseFill, mounts.PhaseDone, mounts.PhaseError}

// collector turns the mounts' Stats into metrics at scrape time: the
// counters live in the serving processes, which outlive the daemon.
type collector struct{ m *mounts.Manager }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	sts, err := c.m.List()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descUp, err)
		return
	}
	var wg sync.WaitGroup
	for _, st := range sts {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
			defer cancel()
			ms, err := c.m.Stats(ctx, st)
			up := 0.0
			if err == nil {
				up = 1
				collectMount(ch, ms, st.Dir, st.Source.Ref)
			}
			ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, st.Dir, st.Source.Ref)
		})
	}
	wg.Wait()
}

func collectMount(ch chan<- prometheus.Metric, ms *mounts.Stats, labels ...string) {
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append(labels, extra...)...)
	}
	counter := func(d *prometheus.Desc, v int64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(labels, extra...)...)
	}
	im, srv := ms.Image, ms.Server
	gauge(descSize, float64(ms.ImageSize))
	gauge(descCached, float64(im.Cached))
	if ms.ImageSize > 0 {
		gauge(descCachedRatio, float64(im.Cached)/float64(ms.ImageSize))
	}
	counter(descFetched, im.BytesFetched)
	counter(descHits, im.Hits)
	counter(descMisses, im.Misses)
	counter(descRequests, im.Requests)
	counter(descRetries, im.Retries)
	counter(descVerify, im.VerifyFailures)
	counter(descEarly, im.EarlyReads)
	counter(descCacheWriteFail, im.CacheWriteFailures)
	counter(descCacheReadFail, im.CacheReadFailures)
	ch <- prometheus.MustNewConstMetric(descDecode, prometheus.CounterValue, im.DecodeSeconds, labels...)
	ch <- prometheus.MustNewConstMetric(descDecodeWait, prometheus.CounterValue, im.DecodeWaitSeconds, labels...)
	for source, h := range im.Latency {
		buckets := make(map[float64]uint64, len(h.Counts))
		for i, n := range h.Counts {
			if i < len(fetcher.LatencyBounds) {
				buckets[fetcher.LatencyBounds[i]] = n
			}
		}
		ch <- prometheus.MustNewConstHistogram(descReadSeconds, h.Count, h.Sum, buckets, append(labels, source)...)
	}
	counter(descNBDRequests, srv.Requests)
	counter(descNBDBytes, srv.Bytes)
	counter(descNBDSpliced, srv.Spliced)
	counter(descNBDAtOnce, srv.AtOnce)
	counter(descNBDErrors, srv.Errors)
	gauge(descInFlight, float64(srv.InFlight))
	gauge(descStuck, float64(srv.Stuck))
	gauge(descOldest, srv.Oldest.Seconds())
	for q, n := range srv.Queues {
		counter(descUblkQueue, n, strconv.Itoa(q))
	}
	// oneHot sets the series of d for each of states: 1 for current.
	oneHot := func(d *prometheus.Desc, states []string, current string, extra ...string) {
		for _, s := range states {
			v := 0.0
			if s == current {
				v = 1
			}
			gauge(d, v, append(extra, s)...)
		}
	}
	oneHot(descPrefetch, phases, ms.Prefetch.Phase)
	gauge(descTraceChunks, float64(ms.Prefetch.TraceChunks))
	for _, h := range im.Hosts {
		oneHot(descHostState, breakerStates, h.State, h.Host)
		counter(descFailedFast, h.FailedFast, h.Host)
		counter(descHostOpened, h.Opened, h.Host)
	}
	if cs := ms.Cache; cs != nil {
		gauge(descCacheUsed, float64(cs.Used))
		gauge(descCacheCap, float64(cs.Capacity))
		counter(descEvictions, cs.Evictions)
		counter(descCorrupt, cs.Corrupt)
		for i, sp := range cs.Stripes {
			stripe := strconv.Itoa(i) + ":" + sp.Dir
			gauge(descStripe, float64(sp.Bytes), stripe)
			counter(descStripeWrites, sp.BytesWritten, stripe)
		}
	}
}

// readyBuckets cover a mount's ready time, from a warm local mount to a
// registry that needed retries.
var readyBuckets = []float64{0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30}

// metrics is the daemon's registry: the mounts' counters plus what the
// daemon measures itself. Made on first use (Mount or a scrape).
type metrics struct {
	once      sync.Once
	reg       *prometheus.Registry
	ready     *prometheus.HistogramVec
	failures  prometheus.Counter
	fallbacks *prometheus.CounterVec
}

func (s *Server) registry() *metrics {
	s.prom.once.Do(func() {
		m := &s.prom
		m.reg = prometheus.NewRegistry()
		m.ready = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lazyblk_mount_ready_seconds",
			Help: "Time from a Mount request to the mounted filesystem, by attach method.", Buckets: readyBuckets},
			[]string{"attach"})
		m.failures = prometheus.NewCounter(prometheus.CounterOpts{Name: "lazyblk_mount_failures_total",
			Help: "Mount requests that failed (bad requests excluded)."})
		m.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lazyblk_layer_fallbacks_total",
			Help: "lazyblk layers the snapshotter reported downloaded whole instead of mounted lazily, by reason: " +
				"labels (a misconfiguration: CRI passed no image reference) or mount (the lazy mount failed)."}, []string{"reason"})
		m.reg.MustRegister(m.ready, m.failures, m.fallbacks, collector{s.Mounts},
			collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	})
	return &s.prom
}

// MetricsHandler serves the daemon's metrics in the Prometheus text format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.registry().reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
