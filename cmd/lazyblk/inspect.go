package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe a lazyblk block image: filesystem, sizes, chunks and digests",
		ArgsUsage: "REF",
		Description: `Fetches REF's image index and its chunk index (verified against the digest
the manifest names) and prints what the block image holds.

Examples:
  lazyblk inspect registry.local/python:3.12-lazyblk
  lazyblk inspect --json oci:./out:v1`,
		Flags: registryFlags("print as JSON"),
		Action: func(c *cli.Context) error {
			loc, d, err := describeArg(c)
			if err != nil {
				return err
			}
			sum := summarize(loc.String(), d.ImageIndex, d.IndexDigest, d.Index)
			sum.Runnable, sum.Artifact = d.Runnable.String(), d.Artifact.String()
			if c.Bool("json") {
				return printJSON(c.App.Writer, sum)
			}
			sum.print(c.App.Writer)
			return nil
		},
	}
}

// summary is what convert and inspect print; its JSON names are stable.
type summary struct {
	Ref         string `json:"ref"`
	Digest      string `json:"digest"`
	Runnable    string `json:"runnableManifest,omitempty"`
	Artifact    string `json:"artifactManifest,omitempty"`
	Version     int    `json:"indexVersion"`
	FS          string `json:"fs"`
	ImageSize   uint64 `json:"imageSize"`
	ChunkSize   uint32 `json:"chunkSize"`
	PieceSize   uint32 `json:"pieceSize"` // 0: chunks without pieces
	Chunks      int    `json:"chunks"`
	Holes       int    `json:"holes"`
	Raw         int    `json:"raw"`
	Zstd        int    `json:"zstd"`
	StoredBytes uint64 `json:"storedBytes"`
	IndexDigest string `json:"indexDigest"`
	// DataDigest names a version 1 image's one data blob.
	DataDigest string `json:"dataDigest,omitempty"`
	// DataSize is the bytes of every data blob.
	DataSize uint64          `json:"dataSize"`
	Regions  []regionSummary `json:"regions"`
	// Push is what convert sent and what the registry had already.
	Push *fetcher.PushReport `json:"push,omitempty"`
	// StartupTrace is the trace convert --startup-trace published.
	StartupTrace *recordSummary `json:"startupTrace,omitempty"`
}

// regionSummary is one region of the image and the blob it is stored in.
type regionSummary struct {
	Kind        string `json:"kind"`
	Layer       string `json:"layer,omitempty"` // the source layer's diff ID
	FirstChunk  int    `json:"firstChunk"`
	Chunks      int    `json:"chunks"`
	Holes       int    `json:"holes"`
	StoredBytes uint64 `json:"storedBytes"` // of its blob: all its chunks, once each
	Blob        string `json:"blob,omitempty"`
}

func summarize(ref string, digest, indexDigest v1.Hash, x *imagefmt.Index) summary {
	st := x.Stats()
	s := summary{
		Ref: ref, Digest: digest.String(), Version: x.Version, FS: x.FS.String(), ImageSize: x.ImageSize, ChunkSize: x.ChunkSize, PieceSize: x.PieceSize,
		Chunks: st.Chunks, Holes: st.Holes, Raw: st.Raw, Zstd: st.Zstd, StoredBytes: st.StoredBytes,
		IndexDigest: indexDigest.String(), DataSize: x.StoredSize(),
	}
	if x.Version == imagefmt.IndexVersion1 {
		s.DataDigest = x.Blobs[0].Digest.String()
	}
	for _, g := range x.Regions {
		r := regionSummary{Kind: g.Kind.String(), FirstChunk: g.First, Chunks: g.Count}
		if g.Kind == imagefmt.RegionLayer {
			r.Layer = g.Layer.String()
		}
		if g.Blob != imagefmt.NoBlob {
			r.Blob, r.StoredBytes = x.Blobs[g.Blob].Digest.String(), x.Blobs[g.Blob].Size
		}
		for _, c := range x.Chunks[g.First : g.First+g.Count] {
			if c.Encoding == imagefmt.EncodingHole {
				r.Holes++
			}
		}
		s.Regions = append(s.Regions, r)
	}
	return s
}

func (s summary) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Reference:\t%s\n", s.Ref)
	fmt.Fprintf(tw, "Digest:\t%s\n", s.Digest)
	if s.Runnable != "" {
		fmt.Fprintf(tw, "Runnable manifest:\t%s\n", s.Runnable)
		fmt.Fprintf(tw, "Artifact manifest:\t%s\n", s.Artifact)
	}
	fmt.Fprintf(tw, "Filesystem:\t%s (chunk index version %d)\n", s.FS, s.Version)
	fmt.Fprintf(tw, "Image size:\t%s (%d bytes)\n", human(s.ImageSize), s.ImageSize)
	fmt.Fprintf(tw, "Chunk size:\t%s\n", human(uint64(s.ChunkSize)))
	if s.PieceSize > 0 {
		fmt.Fprintf(tw, "Piece size:\t%s (each verified alone: a cold read decodes its own first)\n", human(uint64(s.PieceSize)))
	}
	fmt.Fprintf(tw, "Chunks:\t%d (%d raw, %d zstd, %d holes)\n", s.Chunks, s.Raw, s.Zstd, s.Holes)
	fmt.Fprintf(tw, "Stored bytes:\t%s (%.1f%% of image; identical chunks of a blob stored once)\n", human(s.DataSize), pct(s.DataSize, s.ImageSize))
	fmt.Fprintf(tw, "Chunk index:\t%s\n", s.IndexDigest)
	if p := s.Push; p != nil {
		fmt.Fprintf(tw, "Pushed:\t%s of %d blobs (%s) sent; %d (%s) already there; %d (%s) mounted\n", human(uint64(p.Sent())),
			p.Blobs, human(uint64(p.Bytes)), p.Present, human(uint64(p.PresentBytes)), p.Mounted, human(uint64(p.MountedBytes)))
	}
	if t := s.StartupTrace; t != nil {
		fmt.Fprintf(tw, "Start-up trace:\t%s: %d files, %d chunks (%s)\n", t.Digest, t.Files, t.Chunks, human(uint64(t.Bytes)))
	}
	tw.Flush()
	fmt.Fprintln(w, "Regions:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  KIND\tCHUNKS\tHOLES\tSTORED\tLAYER\tBLOB")
	for _, r := range s.Regions {
		chunks := "none" // a layer whose files are all inline with their inodes
		if r.Chunks > 0 {
			chunks = fmt.Sprintf("%d-%d", r.FirstChunk, r.FirstChunk+r.Chunks-1)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\n", r.Kind, chunks, r.Holes, human(r.StoredBytes), short(r.Layer), short(r.Blob))
	}
	tw.Flush()
}

// short abbreviates a digest for a table: the algorithm's first 12 hex
// digits, as docker and crane print them.
func short(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return hex[:12]
	}
	if d == "" {
		return "-"
	}
	return d
}

func pct(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
