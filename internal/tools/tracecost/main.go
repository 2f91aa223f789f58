// Command tracecost says how many chunk bytes a recorded start-up would
// touch on a block image: the chunks holding what the trace's files had
// read (mapped through the image's erofs metadata), chunk 0 and the
// metadata region's. It compares layouts without running the start-up.
//
//	tracecost TRACE.json REF...
package main

import (
	"context"
	"fmt"
	"io/fs"
	"log"
	"os"

	erofs "github.com/erofs/go-erofs"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

func main() {
	if len(os.Args) < 3 {
		log.Fatal("usage: tracecost TRACE.json REF...")
	}
	b, err := os.ReadFile(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	t, err := imagefmt.DecodeTrace(b)
	if err != nil {
		log.Fatal(err)
	}
	for _, ref := range os.Args[2:] {
		n, chunks, err := cost(ref, t.Files)
		if err != nil {
			log.Fatalf("%s: %v", ref, err)
		}
		fmt.Printf("%s: %d chunks, %d MiB\n", ref, chunks, n>>20)
	}
}

func cost(ref string, files []imagefmt.TraceFile) (int64, int, error) {
	ctx := context.Background()
	loc, err := fetcher.ParseLocation(ref, true)
	if err != nil {
		return 0, 0, err
	}
	im, err := fetcher.Open(ctx, loc)
	if err != nil {
		return 0, 0, err
	}
	defer im.Close()
	fsys, err := erofs.Open(im.Reader(ctx))
	if err != nil {
		return 0, 0, err
	}
	x := im.Index()
	cs := int64(x.ChunkSize)
	touched := map[int64]bool{0: true}
	for _, g := range x.Regions {
		if g.Kind == imagefmt.RegionMeta || g.Kind == imagefmt.RegionImage {
			for i := g.First; i < g.First+g.Count && g.Kind == imagefmt.RegionMeta; i++ {
				touched[int64(i)] = true
			}
		}
	}
	for _, f := range files {
		info, err := fs.Stat(fsys, f.Path[1:])
		if err != nil {
			continue
		}
		dr, ok := info.(interface{ DataRange() []erofs.DataRange })
		if !ok {
			continue
		}
		var at int64
		for _, d := range dr.DataRange() {
			for _, rg := range f.Ranges {
				lo, hi := max(rg.Off, at), min(rg.Off+rg.Len, at+d.Size)
				if lo < hi && d.Offset >= 0 {
					for c := (d.Offset + lo - at) / cs; c <= (d.Offset+hi-at-1)/cs; c++ {
						touched[c] = true
					}
				}
			}
			at += d.Size
		}
	}
	var n int64
	for c := range touched {
		n += int64(x.ChunkLen(int(c)))
	}
	return n, len(touched), nil
}
