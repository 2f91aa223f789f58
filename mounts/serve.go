package mounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// deviceDeadConnTimeout is how long a kernel device whose server died
// keeps its requests queued for a reattach. Requests already sent to the
// dead server are not requeued at once: the kernel re-sends them when
// their I/O timeout expires (observed on 6.12: "Connection timed out,
// retrying").
const deviceDeadConnTimeout = 5 * time.Minute

// Serve is the serving process of the mount whose state is in work: it
// opens the image, starts the NBD server, mounts (or, when the state
// already records a device, hands it fresh connections), reports through
// report (then closed), and serves until ctx ends — SIGTERM from an
// unmount — when it unmounts, detaches and removes the state.
func Serve(ctx context.Context, work string, report *os.File) error {
	say := func(rep readyReport) {
		if report != nil {
			json.NewEncoder(report).Encode(rep)
			report.Close()
			report = nil
		}
	}
	pins := newPins(work)
	srv, im, index, st, err := open(ctx, work, pins)
	if err != nil {
		say(readyReport{Error: err.Error()})
		return err
	}
	defer im.Close()
	defer srv.Close()
	loc, _ := fetcher.ParseLocation(st.Source.Ref, st.Source.PlainHTTP)
	pf := newPrefetcher(im, index, loc)
	background, stopBackground := context.WithCancel(ctx)
	defer pf.wait()
	defer stopBackground() // before the wait, on early returns
	if len(st.Source.CacheDirs) > 0 {
		// Before the device attaches: the trace lookup (a few registry
		// round trips) and the replay's first chunks overlap the attach
		// and the mount, instead of starting once the workload already
		// waits on its first misses.
		pf.start(background, st.Background, st.Source.CacheSize)
	}
	if err := attach(ctx, srv, im, st, work); err != nil {
		say(readyReport{Error: err.Error()})
		return err
	}
	go TrimWhenIdle(ctx, im)
	pinned := make(chan struct{}) // closed once the pins stop being written
	if len(st.Source.CacheDirs) > 0 {
		go func() { defer close(pinned); pins.run(ctx, im) }()
	} else {
		close(pinned)
	}
	defer func() { <-pinned }() // on early returns
	ctl, err := serveControl(ctx, work, im, srv, pf, pins)
	if err != nil {
		st.Mount.Unmount()
		say(readyReport{Error: err.Error()})
		return err
	}
	defer func() { // answers in progress (a trace being recorded) finish first
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctl.Shutdown(shut)
	}()
	note := ""
	if st.Mount.Attach == blockdev.AttachNBDFuse && st.Attach == "auto" {
		note = "kernel has no nbd driver: mounted through nbdfuse (a userspace NBD client) instead"
	}
	slog.Info("serving", "ref", st.Source.Ref, "dir", st.Dir, "source", st.Mount.Source) // before the mount command returns
	say(readyReport{State: st, Note: note})

	<-ctx.Done()
	// Reads still in flight fail now (EIO), not when their fetches give
	// up: a forced unmount leaves readers stuck on a registry that does
	// not answer, and the device cannot go while they wait.
	srv.Close()
	<-pinned // no pin file is written while the work directory goes
	err = st.Mount.Unmount()
	slog.Info("stopped", "dir", st.Dir, "stats", fmt.Sprintf("%+v", srv.Stats()), "err", err)
	if err == nil {
		err = os.RemoveAll(work)
	}
	return err
}

// open reads the mount's state, opens its image and starts its NBD server.
func open(ctx context.Context, work string, pins *pins) (*blockdev.Server, *fetcher.Image, v1.Hash, *State, error) {
	st, err := readState(work)
	if err != nil {
		return nil, nil, v1.Hash{}, nil, err
	}
	im, index, err := st.Source.open(ctx, []cache.Option{cache.WithPinned(pins.pinned)}, fetcher.WithFillRate(st.Background.FillRate))
	if err != nil {
		return nil, nil, v1.Hash{}, nil, fmt.Errorf("mount %s: %w", st.Source.Ref, err)
	}
	srv, err := blockdev.NewServer([]blockdev.Export{{Name: st.Source.Ref, Backend: im}},
		blockdev.WithLogger(slog.Default()))
	if err != nil {
		im.Close()
		return nil, nil, v1.Hash{}, nil, err
	}
	return srv, im, index, st, nil
}

// attach mounts the image on st.Dir, or, when the state already records a
// device, hands it fresh connections; then it records the serving process
// in the state.
func attach(ctx context.Context, srv *blockdev.Server, im *fetcher.Image, st *State, work string) error {
	fresh := st.Mount == nil
	if !fresh {
		if err := blockdev.Reattach(srv, st.Source.Ref, st.Mount, st.Connections); err != nil {
			return fmt.Errorf("reattach %s: %w", st.Dir, err)
		}
	} else {
		go readSuperblock(ctx, im)
		attach := st.Attach
		if attach == "auto" {
			attach = blockdev.AutoAttach()
		}
		m, err := blockdev.MountImage(srv, st.Source.Ref, im.Size(), blockdev.MountConfig{
			Dir: st.Dir, FS: im.Index().FS.String(), Attach: attach, Work: work, Connections: st.Connections,
			Timeout: st.IOTimeout, DeadConnTimeout: deviceDeadConnTimeout, Backend: st.Source.Ref, Options: st.Options,
		})
		if err != nil {
			return fmt.Errorf("mount %s on %s: %w", st.Source.Ref, st.Dir, err)
		}
		st.Mount = m
	}
	st.PID = os.Getpid()
	if err := st.write(work); err != nil {
		if fresh { // a reattach leaves the user's mount alone
			err = errors.Join(err, st.Mount.Unmount())
		}
		return err
	}
	st.Serving = true
	return nil
}

// readSuperblock reads the first 4 KiB of the image, where erofs and ext4
// keep their superblocks (at 1 KiB): the mount reads them first, so their
// chunk is fetched while the device attaches instead of after. Measured
// (the cold-start image, 2 ms RTT), the chunk arrives 90 ms into the
// serving process and took 45–50 ms to fetch, all of it on the mount's
// path.
func readSuperblock(ctx context.Context, im *fetcher.Image) {
	var sb [4096]byte
	if _, err := im.ReadAt(ctx, sb[:], 0); err != nil {
		slog.Debug("reading the superblock ahead of the mount", "err", err)
	}
}

// Stats is what a serving process reports of its image.
type Stats struct {
	Image     fetcher.Stats  `json:"image"`
	Server    blockdev.Stats `json:"server"`
	ImageSize int64          `json:"imageSize"`
	Complete  bool           `json:"complete"` // every chunk is cached
	Prefetch  PrefetchStatus `json:"prefetch"`
	// Cache is the chunk cache as this mount's serving process sees it
	// (each process accounts its own reads, writes and evictions).
	Cache *cache.Stats `json:"cache,omitempty"`
}

// serveControl answers the daemon on work/ctl.sock: GET /stats, POST /pins
// (write the pin file now; how many chunks it pins), POST /rescan (rescan
// the cache now, with everyone's pins; its stats), POST
// /prefetch (fetch the whole image in the background, below demand reads,
// after the trace if one is being replayed) and GET /trace?wait=D (the
// chunks read so far, after D or once the mount goes away).
func serveControl(ctx context.Context, work string, im *fetcher.Image, srv *blockdev.Server, pf *prefetcher, pins *pins) (*http.Server, error) {
	path := filepath.Join(work, "ctl.sock")
	os.Remove(path) // left by a server that died
	l, err := blockdev.ListenUnix(path, "")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		is := im.Stats()
		json.NewEncoder(w).Encode(Stats{Image: is, Server: srv.Stats(), ImageSize: im.Size(), Complete: is.Complete,
			Prefetch: pf.Status(), Cache: im.CacheStats()})
	})
	mux.HandleFunc("POST /pins", func(w http.ResponseWriter, _ *http.Request) {
		n, err := pins.flush(im)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(n)
	})
	mux.HandleFunc("POST /rescan", func(w http.ResponseWriter, _ *http.Request) {
		store := im.Cache()
		if store == nil {
			http.Error(w, "the mount has no cache", http.StatusConflict)
			return
		}
		pins.load()
		if err := store.Rescan(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		json.NewEncoder(w).Encode(store.Stats())
	})
	mux.HandleFunc("POST /prefetch", func(w http.ResponseWriter, _ *http.Request) {
		pf.requestFill(ctx)
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /trace", func(w http.ResponseWriter, r *http.Request) {
		if v := r.URL.Query().Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				http.Error(w, "wait: "+err.Error(), http.StatusBadRequest)
				return
			}
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done(): // unmounted: what was read until now
			case <-r.Context().Done():
				return
			}
		}
		json.NewEncoder(w).Encode(pf.trace(r.Context()))
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	return hs, nil
}

// control calls the serving process of the mount st (as Get or List
// returned it).
func (m *Manager) control(ctx context.Context, st *State, method, path string, out any) error {
	dir := st.Dir
	if !st.Serving {
		return fmt.Errorf("%s: its server is not running (lazyblk umount %s)", dir, dir)
	}
	sock := filepath.Join(workDir(m.root(), dir), "ctl.sock")
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://mount"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s: server control: %w", dir, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: server control %s: %s", dir, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Stats returns the counters of the mount st (as Get or List returned it).
func (m *Manager) Stats(ctx context.Context, st *State) (*Stats, error) {
	var s Stats
	if err := m.control(ctx, st, http.MethodGet, "/stats", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Prefetch starts fetching the whole image of the mount on dir into the
// cache, in the background and below demand reads.
func (m *Manager) Prefetch(ctx context.Context, dir string) error {
	st, err := m.Get(dir)
	if err != nil {
		return err
	}
	return m.control(ctx, st, http.MethodPost, "/prefetch", nil)
}

// Trace returns the chunks the mount on dir has read, in the order of
// their first touch, after waiting wait or until the mount goes away,
// whichever comes first.
func (m *Manager) Trace(ctx context.Context, dir string, wait time.Duration) (*imagefmt.Trace, error) {
	st, err := m.Get(dir)
	if err != nil {
		return nil, err
	}
	var t imagefmt.Trace
	if err := m.control(ctx, st, http.MethodGet, "/trace?wait="+wait.String(), &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Pin makes the mount on dir write its pin file now, rather than within
// pinEvery, and returns how many chunks it pins.
func (m *Manager) Pin(ctx context.Context, dir string) (int, error) {
	st, err := m.Get(dir)
	if err != nil {
		return 0, err
	}
	var n int
	err = m.control(ctx, st, http.MethodPost, "/pins", &n)
	return n, err
}

// Rescan makes the mount on dir rescan its cache now, rather than within
// pinEvery*rescanEvery, and returns the cache's stats after it.
func (m *Manager) Rescan(ctx context.Context, dir string) (*cache.Stats, error) {
	st, err := m.Get(dir)
	if err != nil {
		return nil, err
	}
	var cs cache.Stats
	if err := m.control(ctx, st, http.MethodPost, "/rescan", &cs); err != nil {
		return nil, err
	}
	return &cs, nil
}
