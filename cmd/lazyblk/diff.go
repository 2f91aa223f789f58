package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "show what block image B shares with block image A, region by region",
		ArgsUsage: "A B",
		Description: `Fetches both chunk indexes (kilobytes) and prints, for each region of B (its
superblock, each source layer's files, its metadata), how many of its stored
chunks and bytes A has too — what a node that holds A does not fetch to read
B — and whether the region is the same blob as one of A's — what a registry
that holds A does not store again.

Examples:
  lazyblk diff registry.local/app:v1-lazyblk registry.local/app:v2-lazyblk
  lazyblk diff --json oci:./v1:latest oci:./v2:latest`,
		Flags: registryFlags("print as JSON"),
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return cli.Exit("diff needs A and B (see lazyblk diff --help)", 2)
			}
			var idx [2]*imagefmt.Index
			for i := range idx {
				loc, err := fetcher.ParseLocation(c.Args().Get(i), c.Bool("plain-http"))
				if err != nil {
					return cli.Exit(err.Error(), 2)
				}
				d, err := fetcher.Describe(c.Context, loc)
				if err != nil {
					return err
				}
				idx[i] = d.Index
			}
			rep := newDiffReport(imagefmt.Diff(idx[0], idx[1]))
			if c.Bool("json") {
				return printJSON(c.App.Writer, rep)
			}
			rep.print(c)
			return nil
		},
	}
}

// diffReport is what diff prints; its JSON names are stable.
type diffReport struct {
	Regions []diffRegion `json:"regions"`
	diffTotals
}

type diffRegion struct {
	Kind     string `json:"kind"`
	Layer    string `json:"layer,omitempty"`
	SameBlob bool   `json:"sameBlob"`
	diffTotals
}

type diffTotals struct {
	Chunks       int    `json:"chunks"` // stored chunks, each distinct one once
	SharedChunks int    `json:"sharedChunks"`
	NewChunks    int    `json:"newChunks"`
	Bytes        uint64 `json:"bytes"` // their stored bytes
	SharedBytes  uint64 `json:"sharedBytes"`
	NewBytes     uint64 `json:"newBytes"`
}

func newDiffReport(d []imagefmt.RegionDiff) diffReport {
	var rep diffReport
	for _, r := range d {
		t := diffTotals{Chunks: r.Chunks, SharedChunks: r.Shared, NewChunks: r.Chunks - r.Shared,
			Bytes: r.StoredBytes, SharedBytes: r.SharedBytes, NewBytes: r.StoredBytes - r.SharedBytes}
		g := diffRegion{Kind: r.Region.Kind.String(), SameBlob: r.SameBlob, diffTotals: t}
		if r.Region.Kind == imagefmt.RegionLayer {
			g.Layer = r.Region.Layer.String()
		}
		rep.Regions = append(rep.Regions, g)
		rep.Chunks, rep.SharedChunks, rep.NewChunks = rep.Chunks+t.Chunks, rep.SharedChunks+t.SharedChunks, rep.NewChunks+t.NewChunks
		rep.Bytes, rep.SharedBytes, rep.NewBytes = rep.Bytes+t.Bytes, rep.SharedBytes+t.SharedBytes, rep.NewBytes+t.NewBytes
	}
	return rep
}

func (r diffReport) print(c *cli.Context) {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tLAYER\tCHUNKS\tSHARED\tNEW\tNEW BYTES\tSAME BLOB")
	row := func(kind, layer string, t diffTotals, same string) {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s (%.1f%%)\t%s\n", kind, layer, t.Chunks, t.SharedChunks, t.NewChunks,
			human(t.NewBytes), pct(t.NewBytes, t.Bytes), same)
	}
	for _, g := range r.Regions {
		row(g.Kind, short(g.Layer), g.diffTotals, map[bool]string{true: "yes", false: "no"}[g.SameBlob])
	}
	row("total", "", r.diffTotals, "")
	tw.Flush()
	fmt.Fprintf(c.App.Writer, "A node holding A fetches %s of B's %s; the registry stores what is not the same blob.\n",
		human(r.NewBytes), human(r.Bytes))
}
