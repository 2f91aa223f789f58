package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/config"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

func convertCommand() *cli.Command {
	return &cli.Command{
		Name:      "convert",
		Usage:     "convert an OCI image into a lazyblk block image and push it",
		ArgsUsage: "SRC DST",
		Description: `Flattens SRC's layers into one read-only filesystem, cuts it into chunks
(sha256-verified, zstd where that pays), and writes DST as an image index with:
  - a runnable manifest (one squashed layer) that stock containerd and Docker
    still pull and run, unless --no-fallback;
  - a lazyblk artifact manifest holding the chunk index and the data blobs.
Nothing is pushed until the conversion has succeeded; the tag is written last.

Layout (erofs): each source layer's file data goes to a region of its own,
starting on a chunk boundary, stored as a blob of its own; the filesystem
metadata (inodes, directories, small files inline) goes last. Data of a file
a later layer removes or replaces stays a hole (zeros cost nothing), so what
lower layers hold never moves: a new version of an image on the same base
has the same blobs for the unchanged layers — the registry keeps them once,
the push skips them (and says so), and a node that ran the old version
fetches only the new chunks. The same layers always give the same bytes.
ext4 keeps mkfs.ext4's own layout (one region): it places data itself.

Examples:
  lazyblk convert docker.io/library/python:3.12 registry.local/python:3.12-lazyblk
  lazyblk convert --plain-http 127.0.0.1:5000/app:v1 127.0.0.1:5000/app:v1-lazyblk
  lazyblk convert --fs ext4 --compression none oci:./app-layout:v1 oci:./out:v1`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "fs", Value: "erofs", Usage: "filesystem of the block image: erofs or ext4 (ext4 needs root and mkfs.ext4)"},
			&cli.StringFlag{Name: "chunk-size", Value: "4MiB", Usage: "chunk size, a power of two from 64KiB to 64MiB"},
			&cli.StringFlag{Name: "compression", Value: "auto", Usage: "auto (zstd only where it saves >= 10% of a chunk), zstd or none"},
			&cli.BoolFlag{Name: "no-fallback", Usage: "omit the squashed layer stock runtimes unpack (the image then runs only through lazyblk)"},
			&cli.StringFlag{Name: "platform", Usage: "platform to convert from a multi-platform SRC, e.g. linux/arm64 (default linux/amd64)"},
			&cli.BoolFlag{Name: "plain-http", Usage: "talk plain HTTP to the registries (loopback test registries)"},
			&cli.StringFlag{Name: "tmp-dir", Usage: "directory for temporary files (needs room for the unpacked image)", EnvVars: []string{"TMPDIR"}},
			&cli.StringFlag{Name: "startup-trace", Usage: "a prefetch trace (FILE, or REF: the trace published for that image, " +
				"e.g. the previous version) whose files go first in their layers' regions, in the order the start-up read them; " +
				"DST is published with a trace of its own for that start-up"},
			&cli.StringSliceFlag{Name: "mount-from", Usage: "a repository of DST's registry that may hold some blobs already " +
				"(an earlier version, the base image's block image): they are mounted, not uploaded; repeatable"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: runConvert,
	}
}

func runConvert(c *cli.Context) error {
	if c.NArg() != 2 {
		return cli.Exit("convert needs SRC and DST (see lazyblk convert --help)", 2)
	}
	opts, err := convertOptions(c)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	var platform *v1.Platform
	if p := c.String("platform"); p != "" {
		if platform, err = v1.ParsePlatform(p); err != nil {
			return cli.Exit(fmt.Sprintf("--platform %q: %v", p, err), 2)
		}
	}
	src, err := fetcher.ParseLocation(c.Args().Get(0), c.Bool("plain-http"))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	dst, err := fetcher.ParseLocation(c.Args().Get(1), c.Bool("plain-http"))
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	var mountFrom []fetcher.Location
	for _, r := range c.StringSlice("mount-from") {
		l, err := fetcher.ParseLocation(r, c.Bool("plain-http"))
		if err != nil || l.Ref == nil {
			return cli.Exit(fmt.Sprintf("--mount-from %q: want a repository of a registry: %v", r, err), 2)
		}
		mountFrom = append(mountFrom, l)
	}
	progress := newStages(c.App.ErrWriter, !c.Bool("json"))
	if s := c.String("startup-trace"); s != "" {
		progress.start("reading the start-up trace " + s)
		t, err := startupTrace(c, s)
		if err != nil {
			return err
		}
		opts = append(opts, imagefmt.WithStartupOrder(t.Files))
	}

	progress.start("resolving " + src.String())
	img, err := fetcher.ResolveImage(c.Context, src, platform)
	if err != nil {
		return err
	}
	progress.start("flattening layers and writing the block image")
	var conv imagefmt.Progress
	m := startMeter(c.App.ErrWriter, progress.on, func() (string, int64, int64) {
		// Uncompressed layer sizes are not known ahead: bytes, no total.
		if n, done := conv.Layers.Load(), conv.LayersDone.Load(); done < n || n == 0 {
			return fmt.Sprintf("layer %d/%d read", min(done+1, n), n), conv.LayerBytes.Load(), 0
		}
		return "block image written", conv.ImageBytes.Load(), 0
	})
	res, err := imagefmt.Convert(c.Context, img, append(opts, imagefmt.WithProgress(&conv))...)
	m.stop()
	if err != nil {
		return err
	}
	defer res.Close()
	progress.start("pushing to " + dst.String())
	var push fetcher.PushProgress
	m = startMeter(c.App.ErrWriter, progress.on, func() (string, int64, int64) { return "pushed", push.Done.Load(), push.Total.Load() })
	rep, err := fetcher.PushWithOptions(c.Context, dst, res.Image, fetcher.PushOptions{Progress: &push, MountFrom: mountFrom})
	m.stop()
	if err != nil {
		return err
	}
	digest, err := res.Image.Digest()
	if err != nil {
		return err
	}
	sum := summarize(dst.String(), digest, res.IndexDigest, res.Index)
	sum.Push = &rep
	if t := res.StartupTrace(res.IndexDigest); t != nil && dst.Ref != nil {
		progress.start("publishing the start-up trace of " + dst.String())
		h, err := fetcher.PushTrace(c.Context, dst, t)
		if err != nil {
			return fmt.Errorf("convert: %s is pushed, its start-up trace is not: %w", dst, err)
		}
		sum.StartupTrace = &recordSummary{Ref: dst.String(), Index: t.Index.String(), Chunks: len(t.Chunks),
			Bytes: int64(len(t.Chunks)) * int64(t.ChunkSize), Files: len(t.Files), Digest: h.String()}
	}
	progress.done()
	if c.Bool("json") {
		return printJSON(c.App.Writer, sum)
	}
	sum.print(c.App.Writer)
	return nil
}

func convertOptions(c *cli.Context) ([]imagefmt.Option, error) {
	fsType, err := imagefmt.ParseFSType(c.String("fs"))
	if err != nil {
		return nil, fmt.Errorf("--fs: %w", err)
	}
	size, err := config.ParseSize(c.String("chunk-size"))
	if err != nil {
		return nil, fmt.Errorf("--chunk-size: %w", err)
	}
	if err := imagefmt.ValidChunkSize(int(size)); err != nil {
		return nil, fmt.Errorf("--chunk-size: %w", err)
	}
	comp, err := imagefmt.ParseCompression(c.String("compression"))
	if err != nil {
		return nil, fmt.Errorf("--compression: %w", err)
	}
	opts := []imagefmt.Option{imagefmt.WithFS(fsType), imagefmt.WithChunkSize(int(size)),
		imagefmt.WithCompression(comp), imagefmt.WithLogger(slog.Default())}
	if d := c.String("tmp-dir"); d != "" {
		opts = append(opts, imagefmt.WithTempDir(d))
	}
	if c.Bool("no-fallback") {
		opts = append(opts, imagefmt.WithoutFallback())
	}
	return opts, nil
}

// stages prints one line per long step with its duration.
type stages struct {
	w     io.Writer
	on    bool
	name  string
	begun time.Time
}

func newStages(w io.Writer, on bool) *stages { return &stages{w: w, on: on} }

func (s *stages) start(name string) {
	s.done()
	s.name, s.begun = name, time.Now()
	if s.on {
		fmt.Fprintf(s.w, "%s ...\n", name)
	}
}

func (s *stages) done() {
	if s.on && s.name != "" {
		fmt.Fprintf(s.w, "  done in %s\n", time.Since(s.begun).Round(time.Millisecond))
	}
	s.name = ""
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// startupTrace reads --startup-trace: a trace file, or the trace published
// for an image. It must name files (traces record them since index
// version 2).
func startupTrace(c *cli.Context, arg string) (*imagefmt.Trace, error) {
	var t *imagefmt.Trace
	if b, err := os.ReadFile(arg); err == nil {
		if t, err = imagefmt.DecodeTrace(b); err != nil {
			return nil, cli.Exit(fmt.Sprintf("--startup-trace %s: %v", arg, err), 2)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, cli.Exit(fmt.Sprintf("--startup-trace %s: %v", arg, err), 2)
	} else {
		loc, perr := fetcher.ParseLocation(arg, c.Bool("plain-http"))
		if perr != nil {
			return nil, cli.Exit(fmt.Sprintf("--startup-trace %s: neither a file (%v) nor a reference (%v)", arg, err, perr), 2)
		}
		d, err := fetcher.Describe(c.Context, loc)
		if err != nil {
			return nil, fmt.Errorf("--startup-trace %s: %w", arg, err)
		}
		if t, _, err = fetcher.FindTrace(c.Context, loc, d.IndexDigest, d.Index); err != nil {
			return nil, fmt.Errorf("--startup-trace %s: %w", arg, err)
		}
	}
	if len(t.Files) == 0 {
		return nil, cli.Exit(fmt.Sprintf("--startup-trace %s names no files: record it again with this lazyblk (lazyblk prefetch record)", arg), 2)
	}
	return t, nil
}
