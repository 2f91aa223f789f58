package imagefmt

import (
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The layer-stable layout (erofs, index version 2):
//
//	chunk 0          superblock (block 0), zeros after it
//	layer 1 region   the data of every regular file layer 1's tar wrote, each
//	                 at a block boundary: the start-up's files first (in
//	                 start-up order), then files of a chunk or more, each at a
//	                 chunk boundary, then the rest, by path. A file a later
//	                 layer removed or replaced keeps its place, as zeros.
//	                 Padded to a chunk boundary.
//	layer 2 region   ...
//	metadata         inodes, directories, xattrs, symlinks; files of at most
//	                 inlineMax bytes inline with their inode
//
// A layer region is a function of its layer's tar, of which of its files
// are still visible, and of the start-up list: nothing else in the image
// moves its bytes. Each region is its own blob (chunker), so an image
// built on the same lower layers as another stores and fetches only its
// own regions and the metadata, and a node cache keyed by chunk digest
// holds shared chunks once.
//
// Why each file at a block boundary: erofs addresses file data by block.
// Why big files at a chunk boundary: their chunks are then the same
// wherever they are — in another region, after a changed small file — so
// they dedupe and survive changes in front of them.

// inlineMax is the largest file kept inline with its inode in the
// metadata region instead of a block of its own in its layer's region:
// small files would otherwise cost a 4 KiB block each, and a start-up
// touching hundreds of them would touch as many blocks. Larger inline
// files would make the metadata region, which every new image version
// stores and fetches anew, grow with them.
const inlineMax = 1024

// erofsBlock is the block size of the erofs images written here: the page
// size of every kernel that mounts them.
const erofsBlock = 4096

// splitMin is the smallest file whose start-up reads are placed apart
// from the rest of it: in a big shared library a start-up touches a few
// ranges (libtorch_cpu.so: 38 of 114 MiB), and placing it whole at the
// front of its region would make the start-up fetch it whole. splitGranule
// rounds those ranges out: the erofs chunk of a split file, so its chunk
// index stays small (8 bytes per 64 KiB). Each range also gets one more
// granule after it: the kernel's readahead past what a start-up read
// varies from run to run (a range recorded as 64 KiB was read as 128 the
// next time), and what it reads beyond should be at hand, not in the cold
// part of the file elsewhere in the image.
const (
	splitMin     = 1 << 20
	splitGranule = 64 << 10
)

// regionPlan is where one layer's files go.
type regionPlan struct {
	layer  int
	diffID v1.Hash
	start  int64 // image offset, a chunk boundary
	size   int64 // bytes, whole chunks
	slots  []slot
}

// slot is a place in a region for pieces of one file, back to back.
type slot struct {
	off    int64 // from the region's start, a block boundary
	ino    *inode
	pieces []Range // of the file, in order: its whole or part of it
	live   bool    // visible in the flattened tree: written, else left zeros
}

// size is the bytes a slot takes, each piece in whole blocks.
func (s slot) size() int64 {
	var n int64
	for _, p := range s.pieces {
		n += roundUp(p.Len, erofsBlock)
	}
	return n
}

// placement is where a piece of a placed file's data starts in the image.
type placement struct {
	fileOff, len int64
	block        int64
}

// layoutPlan is the whole image: chunk 0, the regions, the metadata.
type layoutPlan struct {
	chunkSize int64
	regions   []regionPlan
	metaStart int64 // image offset of the metadata region, a chunk boundary
	// placed says where each placed file's data is, by file offset.
	placed map[*inode][]placement
}

// planLayout places every file of t. startup names the files a start-up
// read, in the order it read them, with the ranges it read; files it does
// not name follow.
func planLayout(t *tree, diffIDs []v1.Hash, chunkSize int64, startup []TraceFile) *layoutPlan {
	live := map[*inode]bool{}
	_ = t.walk(func(_ string, n *node) error {
		live[n.ino] = true
		return nil
	})
	rank := map[string]int{}
	read := map[string][]Range{}
	for i, f := range startup {
		if _, ok := rank[f.Path]; !ok {
			rank[f.Path], read[f.Path] = i, f.Ranges
		}
	}
	p := &layoutPlan{chunkSize: chunkSize, placed: map[*inode][]placement{}}
	at := chunkSize // chunk 0 is the superblock's
	for layer := range max(len(t.files), len(diffIDs)) {
		var files []layerFile
		if layer < len(t.files) {
			files = t.files[layer]
		}
		r := planRegion(files, chunkSize, rank, read, live)
		r.layer, r.start = layer, at
		if layer < len(diffIDs) {
			r.diffID = diffIDs[layer]
		}
		for _, s := range r.slots {
			if !s.live {
				continue
			}
			off := at + s.off
			for _, pc := range s.pieces {
				p.placed[s.ino] = append(p.placed[s.ino], placement{fileOff: pc.Off, len: pc.Len, block: off / erofsBlock})
				off += roundUp(pc.Len, erofsBlock)
			}
		}
		p.regions = append(p.regions, r)
		at += r.size
	}
	for _, pl := range p.placed {
		sort.Slice(pl, func(i, j int) bool { return pl[i].fileOff < pl[j].fileOff })
	}
	p.metaStart = at
	return p
}

// planRegion orders one layer's files and gives each its place: first
// what the start-up read, in its order (all of a file, or for a split
// one the ranges read); then files of a chunk or more, each at a chunk
// boundary (with what the start-up did not read of split files); then the
// rest, by path.
func planRegion(files []layerFile, chunkSize int64, rank map[string]int, read map[string][]Range, live map[*inode]bool) regionPlan {
	var placed []layerFile
	for _, f := range files {
		if f.ino.size > inlineMax {
			placed = append(placed, f)
		}
	}
	rankOf := func(f layerFile) int {
		if r, ok := rank[f.path]; ok {
			return r
		}
		return len(rank)
	}
	big := func(f layerFile) bool { return f.ino.size >= chunkSize }
	sort.SliceStable(placed, func(i, j int) bool {
		a, b := placed[i], placed[j]
		if ra, rb := rankOf(a), rankOf(b); ra != rb {
			return ra < rb
		}
		if ba, bb := big(a), big(b); ba != bb {
			return ba
		}
		return a.path < b.path
	})
	var r regionPlan
	var rest []slot // the unread parts of split files, placed among the big files
	off := int64(0)
	add := func(s slot) {
		r.slots = append(r.slots, s)
		off = s.off + s.size()
	}
	for _, f := range placed {
		whole := []Range{{0, f.ino.size}}
		s := slot{ino: f.ino, pieces: whole, live: live[f.ino]}
		startup := rankOf(f) < len(rank)
		if startup {
			if hot, cold := splitRead(f.ino, read[f.path]); hot != nil {
				s.pieces = hot
				rest = append(rest, slot{ino: f.ino, pieces: cold, live: s.live})
			}
		} else if big(f) {
			for _, c := range rest { // before the first big file that is not the start-up's
				c.off = roundUp(off, chunkSize)
				add(c)
			}
			rest = nil
			off = roundUp(off, chunkSize)
		}
		s.off = off
		add(s)
	}
	for _, c := range rest {
		c.off = roundUp(off, chunkSize)
		add(c)
	}
	r.size = roundUp(off, chunkSize)
	return r
}

// splitRead splits a start-up file into the pieces the start-up read
// (rounded out to splitGranule) and the rest, when it is big enough, has
// no xattrs (erofs chunk-based inodes want their chunk indexes 8-byte
// aligned after the xattrs, which go-erofs does not pad) and a good part
// of it went unread. hot is nil when the file is placed whole.
func splitRead(ino *inode, ranges []Range) (hot, cold []Range) {
	if ino.size < splitMin || len(ino.xattrs) > 0 || len(ranges) == 0 {
		return nil, nil
	}
	var n int64
	for _, rg := range ranges {
		lo := rg.Off / splitGranule * splitGranule
		hi := min(roundUp(rg.Off+rg.Len, splitGranule)+splitGranule, ino.size)
		if lo >= hi {
			continue
		}
		hot = append(hot, Range{lo, hi - lo})
	}
	hot = mergeRanges(hot)
	for _, h := range hot {
		n += h.Len
	}
	if len(hot) == 0 || n > ino.size*3/4 {
		return nil, nil // read all but a little: whole
	}
	at := int64(0)
	for _, h := range hot {
		if h.Off > at {
			cold = append(cold, Range{at, h.Off - at})
		}
		at = h.Off + h.Len
	}
	if at < ino.size {
		cold = append(cold, Range{at, ino.size - at})
	}
	return hot, cold
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
