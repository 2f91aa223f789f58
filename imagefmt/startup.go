package imagefmt

import (
	"archive/tar"
	"fmt"
	"path"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// WithStartupOrder places the data of the files a start-up read (a
// trace's Files, recorded on this or an earlier version of the image)
// first in their layer's region, contiguous, in the order the start-up
// first read them; Result.StartupTrace then names the chunks that start-up
// will read on the converted image, in that order. Paths the image does
// not have are ignored.
func WithStartupOrder(files []TraceFile) Option {
	return func(o *options) error {
		for _, f := range files {
			if !path.IsAbs(f.Path) {
				return fmt.Errorf("imagefmt: start-up order: path %q is not absolute", f.Path)
			}
		}
		o.startup = files
		return nil
	}
}

// StartupTrace is the trace a start-up of the converted image will follow,
// for its index digest index: the superblock, the metadata region, then
// the chunks holding what the start-up read of each file, in order — a few
// long runs, since those files are contiguous at the front of their
// regions. Nil unless the conversion had WithStartupOrder.
func (r *Result) StartupTrace(index v1.Hash) *Trace {
	if r.startup == nil {
		return nil
	}
	x := r.Index
	cs := int64(x.ChunkSize)
	seen := make([]bool, len(x.Chunks))
	var chunks []int
	add := func(i int) {
		if i >= 0 && i < len(seen) && !seen[i] && x.Chunks[i].Encoding != EncodingHole {
			seen[i] = true
			chunks = append(chunks, i)
		}
	}
	add(0)
	for _, g := range x.Regions {
		if g.Kind == RegionMeta {
			for i := g.First; i < g.First+g.Count; i++ {
				add(i)
			}
		}
	}
	var files []TraceFile
	last := map[int]int{} // region -> its last chunk of start-up data
	for _, f := range r.startup.files {
		pl, ok := r.startup.placed[f.Path]
		if !ok {
			continue // inline in the metadata, or not in this image
		}
		files = append(files, f)
		for _, rg := range f.Ranges {
			rg.Len += splitGranule  // what readahead may read beyond (splitGranule's comment)
			for _, pc := range pl { // the placements the range overlaps
				lo, hi := max(rg.Off, pc.fileOff), min(rg.Off+rg.Len, pc.fileOff+pc.len)
				if lo >= hi {
					continue
				}
				img := pc.block*erofsBlock + lo - pc.fileOff
				for i := img / cs; i <= (img+hi-lo-1)/cs; i++ {
					add(int(i))
					last[regionOf(x, int(i))] = max(last[regionOf(x, int(i))], int(i))
				}
			}
		}
	}
	// The chunk after each region's start-up data: the kernel reads the
	// device ahead of what a reader asked for (nbdfuse's file, a block
	// device), past the last start-up file into the next, by a varying
	// amount.
	for r, g := range x.Regions { // in region order: the trace is deterministic
		if i, ok := last[r]; ok && i+1 < g.First+g.Count {
			add(i + 1)
		}
	}
	return NewTrace(index, x, chunks, files)
}

// startupResult is what StartupTrace needs of a conversion: the start-up's
// files, and where the data of each placed one starts in the image.
type startupResult struct {
	files  []TraceFile
	placed map[string][]placement
}

// newStartupResult finds where the start-up's files landed.
func newStartupResult(t *tree, p *layoutPlan, files []TraceFile) *startupResult {
	if len(files) == 0 || p == nil {
		return nil
	}
	sr := &startupResult{files: files, placed: map[string][]placement{}}
	for _, f := range files {
		n, err := t.lookup(f.Path)
		if err != nil || n.ino.typ != tar.TypeReg {
			continue
		}
		if pl, ok := p.placed[n.ino]; ok {
			sr.placed[f.Path] = pl
		}
	}
	return sr
}

// regionOf is the region holding chunk i.
func regionOf(x *Index, i int) int {
	return sort.Search(len(x.Regions), func(r int) bool { return x.Regions[r].First+x.Regions[r].Count > i })
}
