package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

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
	FS          string `json:"fs"`
	ImageSize   uint64 `json:"imageSize"`
	ChunkSize   uint32 `json:"chunkSize"`
	Chunks      int    `json:"chunks"`
	Holes       int    `json:"holes"`
	Raw         int    `json:"raw"`
	Zstd        int    `json:"zstd"`
	StoredBytes uint64 `json:"storedBytes"`
	IndexDigest string `json:"indexDigest"`
	DataDigest  string `json:"dataDigest"`
	DataSize    uint64 `json:"dataSize"`
}

func summarize(ref string, digest, indexDigest v1.Hash, x *imagefmt.Index) summary {
	st := x.Stats()
	return summary{
		Ref: ref, Digest: digest.String(), FS: x.FS.String(), ImageSize: x.ImageSize, ChunkSize: x.ChunkSize,
		Chunks: st.Chunks, Holes: st.Holes, Raw: st.Raw, Zstd: st.Zstd, StoredBytes: st.StoredBytes,
		IndexDigest: indexDigest.String(), DataDigest: x.Data.String(), DataSize: x.DataSize,
	}
}

func (s summary) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Reference:\t%s\n", s.Ref)
	fmt.Fprintf(tw, "Digest:\t%s\n", s.Digest)
	if s.Runnable != "" {
		fmt.Fprintf(tw, "Runnable manifest:\t%s\n", s.Runnable)
		fmt.Fprintf(tw, "Artifact manifest:\t%s\n", s.Artifact)
	}
	fmt.Fprintf(tw, "Filesystem:\t%s\n", s.FS)
	fmt.Fprintf(tw, "Image size:\t%s (%d bytes)\n", human(s.ImageSize), s.ImageSize)
	fmt.Fprintf(tw, "Chunk size:\t%s\n", human(uint64(s.ChunkSize)))
	fmt.Fprintf(tw, "Chunks:\t%d (%d raw, %d zstd, %d holes)\n", s.Chunks, s.Raw, s.Zstd, s.Holes)
	fmt.Fprintf(tw, "Stored bytes:\t%s (%.1f%% of image; identical chunks stored once)\n", human(s.DataSize), pct(s.DataSize, s.ImageSize))
	fmt.Fprintf(tw, "Chunk index:\t%s\n", s.IndexDigest)
	fmt.Fprintf(tw, "Data blob:\t%s\n", s.DataDigest)
	tw.Flush()
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
