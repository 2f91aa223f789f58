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

// regionPlan is where one layer's files go.
type regionPlan struct {
	layer  int
	diffID v1.Hash
	start  int64 // image offset, a chunk boundary
	size   int64 // bytes, whole chunks
	slots  []slot
}

// slot is one file's place in its region.
type slot struct {
	off  int64 // from the region's start, a block boundary
	ino  *inode
	live bool // visible in the flattened tree: written, else left zeros
}

// layoutPlan is the whole image: chunk 0, the regions, the metadata.
type layoutPlan struct {
	chunkSize int64
	regions   []regionPlan
	metaStart int64 // image offset of the metadata region, a chunk boundary
	placed    map[*inode]int64
}

// planLayout places every file of t. startup ranks paths a start-up reads
// (lower first); files it does not name follow.
func planLayout(t *tree, diffIDs []v1.Hash, chunkSize int64, startup map[string]int) *layoutPlan {
	live := map[*inode]bool{}
	_ = t.walk(func(_ string, n *node) error {
		live[n.ino] = true
		return nil
	})
	p := &layoutPlan{chunkSize: chunkSize, placed: map[*inode]int64{}}
	at := chunkSize // chunk 0 is the superblock's
	for layer := range max(len(t.files), len(diffIDs)) {
		var files []layerFile
		if layer < len(t.files) {
			files = t.files[layer]
		}
		r := planRegion(files, chunkSize, startup, live)
		r.layer, r.start = layer, at
		if layer < len(diffIDs) {
			r.diffID = diffIDs[layer]
		}
		for _, s := range r.slots {
			if s.live {
				p.placed[s.ino] = (at + s.off) / erofsBlock
			}
		}
		p.regions = append(p.regions, r)
		at += r.size
	}
	p.metaStart = at
	return p
}

// planRegion orders one layer's files and gives each its offset.
func planRegion(files []layerFile, chunkSize int64, startup map[string]int, live map[*inode]bool) regionPlan {
	var placed []layerFile
	for _, f := range files {
		if f.ino.size > inlineMax {
			placed = append(placed, f)
		}
	}
	rank := func(f layerFile) int {
		if r, ok := startup[f.path]; ok {
			return r
		}
		return len(startup)
	}
	big := func(f layerFile) bool { return f.ino.size >= chunkSize }
	sort.SliceStable(placed, func(i, j int) bool {
		a, b := placed[i], placed[j]
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra < rb
		}
		if ba, bb := big(a), big(b); ba != bb {
			return ba
		}
		return a.path < b.path
	})
	var r regionPlan
	off := int64(0)
	for _, f := range placed {
		if big(f) && rank(f) == len(startup) {
			off = roundUp(off, chunkSize)
		}
		r.slots = append(r.slots, slot{off: off, ino: f.ino, live: live[f.ino]})
		off += roundUp(f.ino.size, erofsBlock)
	}
	r.size = roundUp(off, chunkSize)
	return r
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }
