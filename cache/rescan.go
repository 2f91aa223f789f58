package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
)

// Rescan brings the index up to date with the directories, which other
// processes sharing them write to and evict from: chunks they added are
// indexed (as recently used: some mount is reading them), chunks they
// removed are forgotten, and the store evicts down to its capacity again.
// Called now and then, it makes the capacity bound the directories rather
// than this process's share of them.
func (s *Store) Rescan() error {
	type found struct {
		size   int64
		stripe int
	}
	present := map[Digest]found{}
	// A chunk this process puts while the walk runs may be missed by it:
	// only entries older than the walk are taken as removed.
	before := s.puts.Load()
	for i, sp := range s.stripes {
		err := filepath.WalkDir(filepath.Join(sp.dir, chunkDir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			dg, ok := parseDigest(d.Name())
			if !ok || s.stripeOf(dg) != i {
				return nil // a write in progress, or not ours to judge
			}
			if info, err := d.Info(); err == nil {
				present[dg] = found{info.Size(), i}
			}
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: rescan %s: %w", sp.dir, err)
		}
	}
	s.mu.Lock()
	for el := s.lru.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*entry); e.pins == 0 && e.put <= before {
			if _, ok := present[e.d]; !ok { // removed by another process
				s.lru.Remove(el)
				delete(s.entries, e.d)
				s.used -= e.size
				s.stripes[e.stripe].bytes.Add(-e.size)
				s.verified.Delete(e.d)
			}
		}
		el = next
	}
	for d, f := range present {
		if _, ok := s.entries[d]; !ok { // added by another process
			s.entries[d] = s.lru.PushFront(&entry{d: d, size: f.size, stripe: f.stripe})
			s.used += f.size
			s.stripes[f.stripe].bytes.Add(f.size)
		}
	}
	victims := s.evictLocked(0)
	s.mu.Unlock()
	s.remove(victims)
	return nil
}
