package imagefmt

// RegionDiff is what one region of an image shares with another image.
type RegionDiff struct {
	Region Region
	// Chunks counts the region's chunks that store bytes (not holes);
	// Shared those whose digest the other image has too, anywhere: a node
	// that holds the other image holds them. Bytes are stored bytes, each
	// distinct chunk once.
	Chunks, Shared           int
	StoredBytes, SharedBytes uint64
	// SameBlob: the other image stores this region in the same blob, so a
	// registry holding the other image holds it already.
	SameBlob bool
}

// Diff says, region by region of b, what b shares with a: the chunks and
// stored bytes a node that holds a need not fetch for b, and the blobs a
// registry that holds a need not store again.
func Diff(a, b *Index) []RegionDiff {
	have := make(map[[32]byte]bool, len(a.Chunks))
	for _, c := range a.Chunks {
		if c.Encoding != EncodingHole {
			have[c.Digest] = true
		}
	}
	blobs := map[string]bool{}
	for _, bl := range a.Blobs {
		blobs[bl.Digest.String()] = true
	}
	var out []RegionDiff
	for _, g := range b.Regions {
		d := RegionDiff{Region: g, SameBlob: g.Blob != NoBlob && blobs[b.Blobs[g.Blob].Digest.String()]}
		seen := map[[32]byte]bool{}
		for _, c := range b.Chunks[g.First : g.First+g.Count] {
			if c.Encoding == EncodingHole || seen[c.Digest] {
				continue
			}
			seen[c.Digest] = true
			d.Chunks++
			d.StoredBytes += uint64(c.Length)
			if have[c.Digest] {
				d.Shared++
				d.SharedBytes += uint64(c.Length)
			}
		}
		out = append(out, d)
	}
	return out
}
