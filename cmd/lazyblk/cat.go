package main

import (
	"bufio"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

func catCommand() *cli.Command {
	return &cli.Command{
		Name:      "cat",
		Usage:     "stream a block image's filesystem image to stdout through the fetcher and cache",
		ArgsUsage: "REF",
		Description: `Reads the whole filesystem image of REF lazily — verified range requests,
chunks kept in the cache — and writes it to stdout: for debugging, for
warming a cache, or to mount the result with a loop device.

Examples:
  lazyblk cat --cache-dir /var/cache/lazyblk registry.local/app:v1-lazyblk > app.erofs
  lazyblk cat --plain-http 127.0.0.1:5000/app:v1-lazyblk | sha256sum`,
		Flags:  sourceFlags(),
		Action: runCat,
	}
}

func runCat(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("cat needs REF (see lazyblk cat --help)", 2)
	}
	src, err := sourceFromFlags(c)
	if err != nil {
		return err
	}
	im, _, err := src.Open(c.Context)
	if err != nil {
		return err
	}
	defer im.Close()
	w := bufio.NewWriterSize(c.App.Writer, 1<<20)
	p := make([]byte, 1<<20)
	for off := int64(0); off < im.Size(); off += int64(len(p)) {
		n, err := im.ReadAt(c.Context, p, off)
		if err != nil && err != io.EOF {
			return err
		}
		if _, err := w.Write(p[:n]); err != nil {
			return fmt.Errorf("write stdout: %w", err)
		}
	}
	return w.Flush()
}
