package imagefmt

import (
	"fmt"
	"io"
	"io/fs"
	"sort"

	erofs "github.com/erofs/go-erofs"
)

// extent is where part of a file's data lies in the filesystem image.
type extent struct {
	img, file, len int64
	path           string
}

// MapFiles names the files the reads of an erofs image touched: r reads
// the image, accessed are byte ranges of it in the order they were first
// read (fetcher.Image.Accessed). It returns each file touched, in the
// order of its first read, with the ranges of it read (block-aligned, as
// the kernel reads). Reads of metadata (inodes, directories) name no file;
// a small file inline with its inode is named when its block was read.
func MapFiles(r io.ReaderAt, accessed []Range) ([]TraceFile, error) {
	exts, err := fileExtents(r)
	if err != nil {
		return nil, err
	}
	byPath := map[string]int{}
	var out []TraceFile
	for _, a := range accessed {
		// The first extent that ends after a.Off, then on while they start
		// before a's end.
		k := sort.Search(len(exts), func(i int) bool { return exts[i].img+exts[i].len > a.Off })
		for ; k < len(exts) && exts[k].img < a.Off+a.Len; k++ {
			e := exts[k]
			lo, hi := max(a.Off, e.img), min(a.Off+a.Len, e.img+e.len)
			i, ok := byPath[e.path]
			if !ok {
				i = len(out)
				byPath[e.path] = i
				out = append(out, TraceFile{Path: e.path})
			}
			out[i].Ranges = append(out[i].Ranges, Range{Off: e.file + lo - e.img, Len: hi - lo})
		}
	}
	for i := range out {
		out[i].Ranges = mergeRanges(out[i].Ranges)
	}
	return out, nil
}

// fileExtents lists the data of every regular file of the erofs image,
// sorted by image offset; a file with several names is listed under the
// first in path order.
func fileExtents(r io.ReaderAt) ([]extent, error) {
	fsys, err := erofs.Open(r)
	if err != nil {
		return nil, fmt.Errorf("imagefmt: map files: %w", err)
	}
	seen := map[int64]bool{}
	var exts []extent
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		dr, ok := info.(interface{ DataRange() []erofs.DataRange })
		if !ok {
			return nil
		}
		var at int64
		for _, x := range dr.DataRange() {
			if x.Offset >= 0 && !seen[x.Offset] {
				seen[x.Offset] = true
				exts = append(exts, extent{img: x.Offset, file: at, len: x.Size, path: "/" + p})
			}
			at += x.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("imagefmt: map files: %w", err)
	}
	sort.Slice(exts, func(i, j int) bool { return exts[i].img < exts[j].img })
	return exts, nil
}

// mergeRanges sorts ranges and joins those that overlap or touch.
func mergeRanges(rs []Range) []Range {
	sort.Slice(rs, func(i, j int) bool { return rs[i].Off < rs[j].Off })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, r.Off+r.Len-out[n-1].Off)
			continue
		}
		out = append(out, r)
	}
	return out
}
