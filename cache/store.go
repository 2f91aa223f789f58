package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/cache/bufpool"
)

// ErrCorrupt reports chunk bytes that do not match their digest.
var ErrCorrupt = errors.New("cache: chunk digest mismatch")

// Digest names a chunk by the sha256 of its uncompressed bytes.
type Digest [sha256.Size]byte

func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Store is a node-wide chunk store striped over several directories.
type Store struct {
	stripes  []*stripe
	capacity int64             // the high watermark: eviction starts above it
	lowFrac  float64           // eviction stops at capacity*lowFrac
	pinned   func(Digest) bool // never evicted; nil: none
	log      *slog.Logger

	mu       sync.Mutex // guards entries, lru, used
	entries  map[Digest]*list.Element
	lru      *list.List // front: most recently used *entry
	files    *list.List // entries with an open file, front: most recently read (files.go)
	used     int64
	verified sync.Map           // Digest -> int64: checked since Open, when its file had this ctime (changed: check again)
	verify   singleflight.Group // one check per chunk, however many readers arrive at once
	bufs     bufpool.Pool       // the checks' buffers
	ahead    chan struct{}      // WillNeed's checks under way (files.go)

	hits, misses, evictions, corrupt atomic.Int64
	puts                             atomic.Uint64 // chunks this process wrote
}

type entry struct {
	d      Digest
	size   int64
	stripe int
	pins   int           // reads in progress; a pinned entry is not evicted nor its file closed
	f      *os.File      // open for reads, or nil (files.go)
	fileEl *list.Element // e's place in Store.files while f is open
	put    uint64        // the store's put count when this process wrote it (0: found on disk)
}

type stripe struct {
	dir     string
	bytes   atomic.Int64
	written atomic.Int64
}

// Option configures Open.
type Option func(*Store) error

// WithLogger sets the logger (discarded by default).
func WithLogger(l *slog.Logger) Option {
	return func(s *Store) error { s.log = l; return nil }
}

// WithPinned exempts the chunks for which pinned returns true from
// eviction: the working sets of running containers, which other images'
// reads must not push out. It is called with the store's lock held, for
// every eviction candidate: it must be fast and must not call the store.
// A store whose unpinned chunks are all evicted grows past its capacity
// rather than evict a pinned one.
func WithPinned(pinned func(Digest) bool) Option {
	return func(s *Store) error { s.pinned = pinned; return nil }
}

// WithLowWatermark makes eviction, once the store exceeds its capacity,
// go on down to fraction of it (1 by default: just below capacity). Lower
// values evict in batches, so a store running full does not evict on
// every Put, at the price of keeping less.
func WithLowWatermark(fraction float64) Option {
	return func(s *Store) error {
		if fraction <= 0 || fraction > 1 {
			return fmt.Errorf("cache: low watermark %v: want a fraction in (0, 1]", fraction)
		}
		s.lowFrac = fraction
		return nil
	}
}

// Open opens (creating) a store over dirs, one per volume, bounded by
// capacity bytes. What a previous run left is reused: temp files are
// removed, complete chunks are indexed oldest-first for eviction, and each
// is verified the first time it is read.
func Open(dirs []string, capacity int64, opts ...Option) (*Store, error) {
	if len(dirs) == 0 {
		return nil, errors.New("cache: no directories")
	}
	if capacity <= 0 {
		return nil, fmt.Errorf("cache: capacity %d must be positive", capacity)
	}
	s := &Store{capacity: capacity, lowFrac: 1, entries: map[Digest]*list.Element{}, lru: list.New(), files: list.New(),
		ahead: make(chan struct{}, aheadChecks), log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	type found struct {
		e     *entry
		mtime int64
	}
	var all []found
	for i, dir := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, chunkDir), 0o700); err != nil {
			return nil, fmt.Errorf("cache: stripe %s: %w", dir, err)
		}
		s.stripes = append(s.stripes, &stripe{dir: dir})
		if err := s.scan(i, true, func(e *entry, mtime int64) { all = append(all, found{e, mtime}) }); err != nil {
			return nil, fmt.Errorf("cache: scan %s: %w", dir, err)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime > all[j].mtime })
	s.mu.Lock()
	for _, f := range all {
		if _, dup := s.entries[f.e.d]; !dup {
			s.linkLocked(f.e, false)
		}
	}
	victims := s.evictLocked()
	s.mu.Unlock()
	s.remove(victims)
	return s, nil
}

// scan lists the chunk files of stripe i with their mtimes. clean (at
// Open) removes what is no chunk: temp files of writers that died, stray
// names; otherwise they are left alone.
func (s *Store) scan(i int, clean bool, found func(e *entry, mtime int64)) error {
	return filepath.WalkDir(filepath.Join(s.stripes[i].dir, chunkDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			if clean && !writerAlive(d.Name()) { // a write a crash interrupted
				return os.Remove(p)
			}
			return nil // another process sharing the cache is writing it
		}
		dg, ok := parseDigest(d.Name())
		info, ierr := d.Info()
		switch {
		case ok && ierr == nil:
			found(&entry{d: dg, size: info.Size(), stripe: i}, info.ModTime().UnixNano())
		case clean:
			return os.Remove(p)
		}
		return nil
	})
}

// linkLocked indexes e, as the most recently used entry or the least.
func (s *Store) linkLocked(e *entry, recent bool) {
	if recent {
		s.entries[e.d] = s.lru.PushFront(e)
	} else {
		s.entries[e.d] = s.lru.PushBack(e)
	}
	s.used += e.size
	s.stripes[e.stripe].bytes.Add(e.size)
}

// unlinkLocked forgets the entry at el; its file is the caller's to remove
// or keep.
func (s *Store) unlinkLocked(el *list.Element) *entry {
	e := el.Value.(*entry)
	s.lru.Remove(el)
	delete(s.entries, e.d)
	s.used -= e.size
	s.stripes[e.stripe].bytes.Add(-e.size)
	if e.pins == 0 { // else its last unpin closes it
		s.closeLocked(e)
	}
	return e
}

// SetCapacity changes the store's capacity (0: hold nothing but pinned
// chunks) and evicts down to it at once.
func (s *Store) SetCapacity(n int64) error {
	if n < 0 {
		return fmt.Errorf("cache: capacity %d must not be negative", n)
	}
	s.mu.Lock()
	s.capacity = n
	victims := s.evictLocked()
	s.mu.Unlock()
	s.remove(victims)
	return nil
}

const (
	chunkDir  = "chunks"
	tmpPrefix = ".tmp-"
)

// writerAlive reports whether the process that named a temp file
// (.tmp-PID-random) still runs: several processes (one per mount) share a
// cache directory, and opening it must not delete their writes in flight.
func writerAlive(name string) bool {
	pid, _, ok := strings.Cut(strings.TrimPrefix(name, tmpPrefix), "-")
	n, err := strconv.Atoi(pid)
	if !ok || err != nil || n <= 0 || n == os.Getpid() {
		return false
	}
	return unix.Kill(n, 0) == nil
}

func parseDigest(name string) (Digest, bool) {
	var d Digest
	b, err := hex.DecodeString(name)
	if err != nil || len(b) != len(d) {
		return d, false
	}
	copy(d[:], b)
	return d, true
}

// Stripes is the number of directories the store is striped over; 0 for
// a nil store.
func (s *Store) Stripes() int {
	if s == nil {
		return 0
	}
	return len(s.stripes)
}

// stripeOf spreads chunks over stripes by digest, so writes of a sequential
// fill land on every volume in turn.
func (s *Store) stripeOf(d Digest) int { return int(d[0]) % len(s.stripes) }

func (s *Store) path(st int, d Digest) string {
	h := d.String()
	return filepath.Join(s.stripes[st].dir, chunkDir, h[:2], h)
}

// ReadAt reads len(p) bytes at off of chunk d, whose full size is size,
// and reports whether the chunk was cached. A cached chunk is read whole
// and verified the first time it is read after Open; a corrupt one is
// removed and reported as a miss.
func (s *Store) ReadAt(ctx context.Context, d Digest, size int64, p []byte, off int64) (bool, error) {
	if off < 0 || off+int64(len(p)) > size {
		return false, fmt.Errorf("cache: read [%d,+%d) outside chunk %s of %d bytes", off, len(p), d, size)
	}
	e, f := s.open(d, size)
	if e == nil {
		s.misses.Add(1)
		return false, nil
	}
	defer s.unpin(e)
	if _, err := f.ReadAt(p, off); err != nil {
		return false, fmt.Errorf("cache: read chunk %s: %w", d, err)
	}
	s.hits.Add(1)
	return true, nil
}

// open finds chunk d, whose full size is size, pins it and returns its
// open file, checked. e is nil when d is not cached, or not as it should
// be (wrong size, file gone, corrupt: then it is removed).
func (s *Store) open(d Digest, size int64) (e *entry, f *os.File) {
	if e = s.pin(d); e == nil {
		return nil, nil
	}
	var err error
	if e.size == size {
		f, err = s.file(e)
	}
	if e.size != size || err != nil { // wrong size or file gone: not this chunk
		s.drop(e)
		s.unpin(e)
		return nil, nil
	}
	if !s.check(e, f) { // corrupt, removed
		s.unpin(e)
		return nil, nil
	}
	return e, f
}

// check verifies e's file, open as f, the first time it is read after
// Open: it reads the whole chunk, a piece at a time, and checks it by its
// CRC or its sha256 (checksum.go; the bytes then sit in the page cache
// for the reader). A chunk that fails, or cannot be read, is counted
// corrupt, removed and reported as not ok. Readers arriving together (NBD
// clients send many requests per chunk at once, and WillNeed checks ahead
// of them) share one check.
func (s *Store) check(e *entry, f *os.File) bool {
	if s.unchanged(e.d, f) {
		return true
	}
	v, _, _ := s.verify.Do(string(e.d[:]), func() (any, error) {
		if s.unchanged(e.d, f) {
			return true, nil // checked by a reader that just finished
		}
		if !s.current(e) {
			return false, nil // found corrupt and dropped by a check that just finished
		}
		buf := s.bufs.Get(checkPiece)
		defer s.bufs.Put(buf)
		// The ctime is taken before the bytes are checked and compared
		// after: a write that lands during the check would otherwise be
		// recorded as checked. A file written to that often is treated
		// as corrupt.
		why := errWrittenDuringCheck
		for range 3 {
			before, cerr := ctime(f)
			if ok, err := intact(f, e.size, e.d, *buf); !ok {
				why = err
				break
			}
			if testHookChecked != nil {
				testHookChecked(f)
			}
			if after, aerr := ctime(f); cerr == nil && aerr == nil && after == before {
				s.verified.Store(e.d, before)
				return true, nil
			}
		}
		s.corrupt.Add(1)
		s.log.Warn("corrupt cached chunk removed", "digest", e.d.String(), "err", why)
		s.drop(e)
		return false, nil
	})
	return v.(bool)
}

var errWrittenDuringCheck = errors.New("written to while it was checked")

// testHookChecked, set by a test, runs after a check found a chunk file
// intact and before its ctime is compared.
var testHookChecked func(f *os.File)

// unchanged reports whether chunk d was checked since Open and its file,
// open as f, has not changed since: a write to a chunk file under a live
// store (a stray process, a corrupting tool) changes its ctime, and the
// chunk is then checked again before a byte of it is served. One fstat
// per read.
func (s *Store) unchanged(d Digest, f *os.File) bool {
	c, ok := s.verified.Load(d)
	if !ok {
		return false
	}
	now, err := ctime(f)
	return err == nil && now == c.(int64)
}

func ctime(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Ctim.Nano(), nil
}

// Has reports whether chunk d is cached, without counting a hit or miss.
func (s *Store) Has(d Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.entries[d]
	return ok
}

// Ready reports whether chunk d is cached and checked since Open: its
// next read waits for no check (see File).
func (s *Store) Ready(d Digest) bool {
	if _, ok := s.verified.Load(d); !ok {
		return false
	}
	return s.Has(d)
}

// pin finds chunk d's entry, marks it most recently used and pins it
// (not evicted, its file not closed) until unpin; nil when d is not
// cached.
func (s *Store) pin(d Digest) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.entries[d]
	if !ok {
		return nil
	}
	s.lru.MoveToFront(el)
	e := el.Value.(*entry)
	e.pins++
	return e
}

// unpin ends a pin; the last one of an entry dropped meanwhile closes its
// file.
func (s *Store) unpin(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.pins--
	if e.pins == 0 && !s.currentLocked(e) {
		s.closeLocked(e)
	}
}

// current reports whether e is still the entry for its digest (not
// dropped or replaced since the caller found it).
func (s *Store) current(e *entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.currentLocked(e)
}

func (s *Store) currentLocked(e *entry) bool {
	el, ok := s.entries[e.d]
	return ok && el.Value == e
}

// drop forgets an entry and deletes its file: metadata first, then data.
func (s *Store) drop(e *entry) {
	s.mu.Lock()
	if el, ok := s.entries[e.d]; ok && el.Value == e {
		s.unlinkLocked(el)
	}
	s.mu.Unlock()
	s.verified.Delete(e.d)
	_ = os.Remove(s.path(e.stripe, e.d))
}
