package cache

import (
	"errors"
	"fmt"
	"io/fs"
)

// Rescan brings the index up to date with the directories, which other
// processes sharing them write to and evict from: chunks they added are
// indexed (as recently used: some mount is reading them), chunks they
// removed are forgotten, and the store evicts down to its capacity again.
// Called now and then, it makes the capacity bound the directories rather
// than this process's share of them.
func (s *Store) Rescan() error {
	present := map[Digest]*entry{}
	// A chunk this process puts while the walk runs may be missed by it:
	// only entries older than the walk are taken as removed.
	before := s.puts.Load()
	for i, sp := range s.stripes {
		err := s.scan(i, false, func(e *entry, _ int64) { present[e.d] = e })
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cache: rescan %s: %w", sp.dir, err)
		}
	}
	s.mu.Lock()
	for el := s.lru.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*entry); e.pins == 0 && e.put <= before {
			if _, ok := present[e.d]; !ok { // removed by another process
				s.unlinkLocked(el)
				s.verified.Delete(e.d)
			}
		}
		el = next
	}
	for d, e := range present {
		if _, ok := s.entries[d]; !ok { // added by another process
			s.linkLocked(e, true)
		}
	}
	victims := s.evictLocked()
	s.mu.Unlock()
	s.remove(victims)
	return nil
}
