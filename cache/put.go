package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Put stores chunk d. data is verified against d before anything is
// written; the file appears under its name only complete, with its CRC
// (checksum.go), and synced (temp file, fsync, rename, fsync of the
// directory), so a crash leaves either nothing or the whole chunk.
// Putting a chunk already present is a no-op.
func (s *Store) Put(ctx context.Context, d Digest, data []byte) error {
	if sha256.Sum256(data) != d {
		return fmt.Errorf("%w: put %s", ErrCorrupt, d)
	}
	return s.PutVerified(ctx, d, data, ReadLater)
}

// When says whether a chunk being written is about to be read from the
// cache, and so where its bytes go besides the disk.
type When bool

const (
	// ReadSoon keeps the chunk's bytes in the page cache: readahead ahead
	// of a slower reader, a trace's prefetch, a scattered reader's miss
	// and its neighbours, whose
	// reader then reads the chunk file from memory instead of reading
	// back from the disk what was just written to it. Measured, a cold 2
	// GiB read through nbdfuse read 2.06 GiB back from the cache disk with
	// every chunk written around the page cache: on a volume whose
	// ceiling counts reads and writes together (EBS gp3, 125 MiB/s) that
	// halves a cold read. The copy into the page cache costs CPU (0.8 GB/s
	// of one core here), so it is kept for chunks someone will read there.
	ReadSoon When = true
	// ReadLater writes an aligned chunk around the page cache (O_DIRECT):
	// the fill of an image's rest, which nobody may read for hours and
	// whose gigabytes would only push other pages out of memory, and the
	// chunk a sequential reader is in or has passed (it has the bytes in
	// memory already).
	ReadLater When = false
)

// PutVerified is Put for data the caller has just checked against d, as
// the fetcher does with every chunk before serving it: the same atomic
// write without hashing the chunk a second time (on a cold read that
// second hash was a quarter of the fetcher's CPU).
func (s *Store) PutVerified(ctx context.Context, d Digest, data []byte, when When) error {
	size := int64(len(data))
	if size > s.capacity {
		return fmt.Errorf("cache: chunk %s of %d bytes exceeds capacity %d", d, size, s.capacity)
	}
	s.mu.Lock()
	if _, ok := s.entries[d]; ok {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}

	st := s.stripeOf(d)
	final := s.path(st, d)
	if err := writeAtomic(final, data, when); err != nil {
		return fmt.Errorf("cache: put %s: %w", d, err)
	}
	s.stripes[st].written.Add(size)
	var fi unix.Stat_t
	statErr := unix.Stat(final, &fi) // the file as written: later writes to it change its ctime

	s.mu.Lock()
	if _, ok := s.entries[d]; ok { // a concurrent Put won
		s.mu.Unlock()
		return nil
	}
	s.linkLocked(&entry{d: d, size: size, stripe: st, put: s.puts.Add(1)}, true)
	victims := s.evictLocked()
	s.mu.Unlock()
	if statErr == nil {
		s.verified.Store(d, fi.Ctim.Nano())
	}
	s.remove(victims)
	return nil
}

func writeAtomic(final string, data []byte, when When) (err error) {
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, fmt.Sprintf("%s%d-*", tmpPrefix, os.Getpid()))
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = write(f, data, when); err != nil {
		return err
	}
	storeCRC(f, crc32.Checksum(data, castagnoli))
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), final); err != nil {
		return err
	}
	return syncDir(dir)
}

// write writes data to the new file f. An aligned chunk (the usual 4 MiB
// one) read later goes with O_DIRECT: no copy into the page cache and no
// dirty pages for the sync to flush. Where the filesystem refuses
// O_DIRECT, or data is not aligned, or the chunk is read soon, it is an
// ordinary write.
func write(f *os.File, data []byte, when When) error {
	const align = 4096
	if when == ReadLater && len(data) > 0 && len(data)%align == 0 && uintptr(unsafe.Pointer(&data[0]))%align == 0 {
		if d, err := os.OpenFile(f.Name(), os.O_WRONLY|unix.O_DIRECT, 0); err == nil {
			_, err = d.Write(data)
			if cerr := d.Close(); err == nil {
				err = cerr
			}
			if err == nil || !errors.Is(err, unix.EINVAL) {
				return err
			}
		}
	}
	_, err := f.Write(data)
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// evictLocked, once used exceeds the capacity (the high watermark),
// unlinks least recently used entries that nobody reads and nobody pins
// until used fits the low watermark, and returns them for file removal
// outside the lock. Metadata goes first, data after (a crash in between
// leaves an orphan file that Open indexes again, never an index naming no
// file).
func (s *Store) evictLocked() []*entry {
	if s.used <= s.capacity {
		return nil
	}
	low := int64(float64(s.capacity) * s.lowFrac)
	var victims []*entry
	for el := s.lru.Back(); el != nil && s.used > low; {
		prev := el.Prev()
		if e := el.Value.(*entry); e.pins == 0 && (s.pinned == nil || !s.pinned(e.d)) {
			victims = append(victims, s.unlinkLocked(el))
		}
		el = prev
	}
	return victims
}

func (s *Store) remove(victims []*entry) {
	for _, e := range victims {
		s.verified.Delete(e.d)
		if err := os.Remove(s.path(e.stripe, e.d)); err != nil && !os.IsNotExist(err) {
			s.log.Warn("remove evicted chunk", "digest", e.d.String(), "err", err)
		}
		s.evictions.Add(1)
	}
}

// Stats is a snapshot of the store's counters.
type Stats struct {
	Hits      int64         `json:"hits"`
	Misses    int64         `json:"misses"`
	Evictions int64         `json:"evictions"`
	Corrupt   int64         `json:"corrupt"`
	Chunks    int           `json:"chunks"`
	Used      int64         `json:"used"`
	Capacity  int64         `json:"capacity"`
	Stripes   []StripeStats `json:"stripes"`
}

// StripeStats is one volume's share.
type StripeStats struct {
	Dir          string `json:"dir"`
	Bytes        int64  `json:"bytes"`        // held now
	BytesWritten int64  `json:"bytesWritten"` // written since Open
}

// Stats returns the current counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Chunks: len(s.entries), Used: s.used, Capacity: s.capacity}
	s.mu.Unlock()
	st.Hits, st.Misses, st.Evictions, st.Corrupt = s.hits.Load(), s.misses.Load(), s.evictions.Load(), s.corrupt.Load()
	for _, sp := range s.stripes {
		st.Stripes = append(st.Stripes, StripeStats{Dir: sp.dir, Bytes: sp.bytes.Load(), BytesWritten: sp.written.Load()})
	}
	return st
}
