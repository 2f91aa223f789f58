package mounts

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lazyblk/lazyblk/cache"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// Pins keep running containers' working sets in the node's chunk cache.
// Every mount's serving process writes the digests of the chunks its
// image has had read so far (first touches) to its work directory, and
// every serving process's cache evicts none of the chunks any mount
// lists: reads of one image never push out what another's container
// uses. A pin file goes with its mount's work directory, at unmount or at
// the cleanup after a crash.
//
//	<root>/mounts/<hash of DIR>/pins   32-byte sha256 digests, back to back
//
// The same loop rescans the cache every rescanEvery: the other serving
// processes sharing it add and evict chunks, and the rescan makes the
// capacity bound the directories, not each process's share of them.
const (
	pinFile     = "pins"
	pinEvery    = 2 * time.Second // how often pin files are written and read
	rescanEvery = 5               // pin rounds between cache rescans (10 s)
)

// pins is the node's pinned chunks as this serving process last read them.
type pins struct {
	root, own string
	set       atomic.Pointer[map[cache.Digest]struct{}]

	mu      sync.Mutex // guards written and the writing of own
	written int        // first touches in own (-1: none written)
}

// newPins reads every mount's pins under the state root of work (this
// mount's work directory).
func newPins(work string) *pins {
	p := &pins{root: filepath.Dir(filepath.Dir(work)), own: filepath.Join(work, pinFile), written: -1}
	p.load()
	return p
}

// Pinned returns the test for cache.WithPinned of the chunks the mounts
// under root (a state directory, DefaultRoot for "") have pinned now.
func Pinned(root string) func(cache.Digest) bool {
	if root == "" {
		root = DefaultRoot
	}
	p := &pins{root: root}
	p.load()
	return p.pinned
}

// pinned is the cache's WithPinned test.
func (p *pins) pinned(d cache.Digest) bool {
	_, ok := (*p.set.Load())[d]
	return ok
}

// load reads every mount's pin file.
func (p *pins) load() {
	set := map[cache.Digest]struct{}{}
	files, _ := filepath.Glob(filepath.Join(p.root, "mounts", "*", pinFile))
	for _, f := range files {
		b, err := os.ReadFile(f) // a mount going away: its pins go with it
		if err != nil {
			continue
		}
		for ; len(b) >= len(cache.Digest{}); b = b[len(cache.Digest{}):] {
			set[cache.Digest(b)] = struct{}{}
		}
	}
	p.set.Store(&set)
}

// flush writes this mount's pin file if im has been read since the last
// write, and returns how many chunks it pins.
func (p *pins) flush(im *fetcher.Image) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	touched := im.Touched()
	b := pinBytes(im.Index(), touched)
	if len(touched) == p.written {
		return len(b) / len(cache.Digest{}), nil
	}
	if err := replaceFile(p.own, b); err != nil {
		return 0, err
	}
	p.written = len(touched)
	return len(b) / len(cache.Digest{}), nil
}

// run keeps this mount's pin file up to date with im's first touches and
// reloads everyone's, every pinEvery until ctx ends; every rescanEvery
// rounds it rescans im's cache.
func (p *pins) run(ctx context.Context, im *fetcher.Image) {
	t := time.NewTicker(pinEvery)
	defer t.Stop()
	for round := 1; ; round++ {
		if _, err := p.flush(im); err != nil {
			slog.Warn("pins not written", "err", err)
		}
		p.load()
		if round%rescanEvery == 0 {
			if err := im.Cache().Rescan(); err != nil {
				slog.Warn("cache rescan", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pinBytes lists the digests of the chunks (holes aside) in x.
func pinBytes(x *imagefmt.Index, chunks []int) []byte {
	b := make([]byte, 0, len(chunks)*len(cache.Digest{}))
	for _, i := range chunks {
		if c := x.Chunks[i]; c.Encoding != imagefmt.EncodingHole {
			b = append(b, c.Digest[:]...)
		}
	}
	return b
}
