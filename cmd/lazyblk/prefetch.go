package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/mounts"
)

func prefetchCommand() *cli.Command {
	return &cli.Command{
		Name:  "prefetch",
		Usage: "record, publish and replay the order in which a workload reads an image",
		Description: `A mounted image records which chunks its readers touch first, in order, and
which bytes of which files they read (erofs). Saved as a prefetch trace and
pushed next to the image, it makes the next start of that image fetch those
chunks ahead of its reads, coalesced and in parallel, below demand reads; a
mount with a cache looks the trace up by itself. Its files apply to any later
version of the image: 'lazyblk convert --startup-trace' puts them first in
each layer's region and publishes the new version with a trace of its own.

  1. lazyblk mount REF /mnt/app           (or start the container)
  2. run the workload's start-up
  3. lazyblk prefetch record /mnt/app -o trace.json
  4. lazyblk prefetch push REF trace.json

The trace is an OCI artifact whose subject is the image: registries with the
referrers API list it there, others under the tag sha256-<image digest hex>.
The image itself is not pushed again.`,
		Subcommands: []*cli.Command{prefetchRecordCommand(), prefetchPushCommand(), prefetchShowCommand(), prefetchFillCommand(), prefetchWarmCommand()},
	}
}

func prefetchRecordCommand() *cli.Command {
	return &cli.Command{
		Name:      "record",
		Usage:     "save the chunks and files a mounted image has read, in first-touch order",
		ArgsUsage: "DIR|REF",
		Description: `Waits --duration (without it: until the image is unmounted, or Ctrl-C), then
writes the trace of everything read since the mount to --output; --duration 0
saves what was read until now. REF picks the mount of that reference when only
one has it.

Examples:
  lazyblk prefetch record --duration 30s -o app.trace.json /mnt/app
  lazyblk prefetch record --duration 0 --json -o app.trace.json registry.local/app:v1-lazyblk`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "duration", DefaultText: "until unmounted or interrupted",
				Usage: "how long to go on recording; 0 saves what was read until now"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "-", Usage: "file to write the trace to (-: stdout)"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
			stateDirFlag(),
		},
		Action: runPrefetchRecord,
	}
}

// recordSummary is what record and push print.
type recordSummary struct {
	Ref    string `json:"ref"`
	Dir    string `json:"dir,omitempty"`
	Index  string `json:"index"`
	Chunks int    `json:"chunks"`
	Bytes  int64  `json:"bytes"`
	Files  int    `json:"files"` // files read, named in the trace (erofs)
	Output string `json:"output,omitempty"`
	Digest string `json:"digest,omitempty"` // the pushed trace artifact
}

func runPrefetchRecord(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("prefetch record needs DIR or REF (see lazyblk prefetch record --help)", 2)
	}
	if c.Duration("duration") < 0 {
		return cli.Exit("--duration: want 0 or more", 2)
	}
	m := manager(c)
	st, err := findMount(m, c.Args().First())
	if err != nil {
		return err
	}
	wait := time.Duration(1<<63 - 1) // until unmounted
	if c.IsSet("duration") {
		wait = c.Duration("duration")
	}
	t, err := m.Trace(c.Context, st.Dir, wait)
	if err != nil && c.Context.Err() != nil { // interrupted: what was read until now
		t, err = m.Trace(context.Background(), st.Dir, 0)
	}
	if err != nil {
		return fmt.Errorf("record %s: %w", st.Dir, err)
	}
	b, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	out := c.String("output")
	if out == "-" {
		fmt.Fprintln(c.App.Writer, string(b))
	} else if err := writeFileAtomic(out, append(b, '\n')); err != nil {
		return err
	}
	sum := recordSummary{Ref: st.Source.Ref, Dir: st.Dir, Index: t.Index.String(), Chunks: len(t.Chunks),
		Bytes: int64(len(t.Chunks)) * int64(t.ChunkSize), Files: len(t.Files), Output: out}
	if out == "-" {
		return nil
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, sum)
	}
	fmt.Fprintf(c.App.Writer, "recorded %d chunks (%s) and %d files of %s in %s\n", sum.Chunks, mib(sum.Bytes), sum.Files, sum.Ref, out)
	return nil
}

// findMount returns the mount on arg, or the one mount of reference arg.
func findMount(m *mounts.Manager, arg string) (*mounts.State, error) {
	if dir, err := mounts.AbsDir(arg); err == nil {
		if st, err := m.Get(dir); err == nil {
			return st, nil
		}
	}
	all, err := m.List()
	if err != nil {
		return nil, err
	}
	var found []*mounts.State
	for _, st := range all {
		if st.Source.Ref == arg {
			found = append(found, st)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("%s: no lazyblk mount on that directory or of that reference (lazyblk status lists them)", arg)
	}
	return nil, fmt.Errorf("%s is mounted %d times: name the directory", arg, len(found))
}

// writeFileAtomic writes path whole or not at all.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

func prefetchPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "attach a recorded trace to its image in the registry",
		ArgsUsage: "REF TRACE",
		Description: `Checks that TRACE was recorded against REF's chunk index, then pushes it as an
artifact referring to REF (the image is not pushed again). Mounts of REF with a
cache replay the newest trace.

Examples:
  lazyblk prefetch push registry.local/app:v1-lazyblk app.trace.json
  lazyblk prefetch push --plain-http --json 127.0.0.1:5000/app:v1-lazyblk app.trace.json`,
		Flags: registryFlags("print the result as JSON"),
		Action: func(c *cli.Context) error {
			loc, err := refArgs(c, 2, "REF and TRACE")
			if err != nil {
				return err
			}
			b, err := os.ReadFile(c.Args().Get(1))
			if err != nil {
				return err
			}
			t, err := imagefmt.DecodeTrace(b)
			if err != nil {
				return fmt.Errorf("%s: %w", c.Args().Get(1), err)
			}
			h, err := fetcher.PushTrace(c.Context, loc, t)
			if err != nil {
				return err
			}
			sum := recordSummary{Ref: loc.String(), Index: t.Index.String(), Chunks: len(t.Chunks),
				Bytes: int64(len(t.Chunks)) * int64(t.ChunkSize), Digest: h.String()}
			if c.Bool("json") {
				return printJSON(c.App.Writer, sum)
			}
			fmt.Fprintf(c.App.Writer, "pushed trace %s (%d chunks, %s) for %s\n", h, sum.Chunks, mib(sum.Bytes), sum.Ref)
			return nil
		},
	}
}

func prefetchShowCommand() *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "print the trace a mount of REF would replay",
		ArgsUsage: "REF",
		Description: `Looks up the newest trace recorded against REF's chunk index in the registry
(referrers API, or the sha256-<digest> tag) and summarizes it.

Examples:
  lazyblk prefetch show registry.local/app:v1-lazyblk
  lazyblk prefetch show --json registry.local/app:v1-lazyblk > app.trace.json`,
		Flags: registryFlags("print the trace itself, as JSON"),
		Action: func(c *cli.Context) error {
			loc, d, err := describeArg(c)
			if err != nil {
				return err
			}
			t, h, err := fetcher.FindTrace(c.Context, loc, d.IndexDigest, d.Index)
			if errors.Is(err, fetcher.ErrNoTrace) {
				return cli.Exit(err.Error(), 1)
			} else if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, t)
			}
			fmt.Fprintf(c.App.Writer, "trace %s: %d of %d chunks (%s) of %s\n", h, len(t.Chunks), len(d.Index.Chunks),
				mib(int64(len(t.Chunks))*int64(t.ChunkSize)), loc)
			return nil
		},
	}
}

func prefetchFillCommand() *cli.Command {
	return &cli.Command{
		Name:      "fill",
		Usage:     "fetch the rest of a mounted image into the cache, below demand reads",
		ArgsUsage: "DIR|REF",
		Description: `Starts fetching every chunk not cached yet (after the trace, while one is being
replayed) and returns; lazyblk status shows the progress. With --wait it stays
until the image is complete, with a progress bar on a terminal. Images up to
the fill size (--fill-below, fetcher config prefetch.fill_below) fill by
themselves.

Examples:
  lazyblk prefetch fill /mnt/app
  lazyblk prefetch fill --wait --json registry.example.com/app:v1-lazyblk`,
		Flags: []cli.Flag{stateDirFlag(),
			&cli.BoolFlag{Name: "wait", Usage: "return once every chunk is cached"},
			&cli.BoolFlag{Name: "json", Usage: "print the mount's counters as JSON at the end"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cli.Exit("prefetch fill needs DIR or REF (see lazyblk prefetch fill --help)", 2)
			}
			m := manager(c)
			st, err := findMount(m, c.Args().First())
			if err != nil {
				return err
			}
			if err := m.Prefetch(c.Context, st.Dir); err != nil {
				return err
			}
			if !c.Bool("wait") {
				if c.Bool("json") {
					return printJSON(c.App.Writer, map[string]string{"dir": st.Dir, "ref": st.Source.Ref, "phase": "started"})
				}
				fmt.Fprintf(c.App.Writer, "filling %s (%s)\n", st.Dir, st.Source.Ref)
				return nil
			}
			ms, err := waitFilled(c, m, st)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, ms)
			}
			fmt.Fprintf(c.App.Writer, "%s (%s) is complete: %s fetched\n", st.Dir, st.Source.Ref, mib(ms.Image.BytesFetched))
			return nil
		},
	}
}

// waitFilled polls the mount's counters until every chunk is cached,
// drawing the cached share on a terminal; it fails when the fill stops on
// an error or the mount goes away.
func waitFilled(c *cli.Context, m *mounts.Manager, st *mounts.State) (*mounts.Stats, error) {
	var last atomic.Pointer[mounts.Stats]
	bar := startMeter(c.App.ErrWriter, !c.Bool("json"), func() (string, int64, int64) {
		if ms := last.Load(); ms != nil {
			return "cached", ms.Image.Cached, ms.ImageSize
		}
		return "cached", 0, 0
	})
	defer bar.stop()
	t := time.NewTicker(meterEvery)
	defer t.Stop()
	for {
		ms, err := m.Stats(c.Context, st)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", st.Dir, err)
		}
		last.Store(ms)
		switch {
		case ms.Complete:
			return ms, nil
		case ms.Prefetch.Phase == mounts.PhaseError:
			return nil, fmt.Errorf("%s: the fill stopped: %s", st.Dir, ms.Prefetch.Error)
		}
		select {
		case <-t.C:
		case <-c.Context.Done():
			return nil, c.Context.Err()
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
