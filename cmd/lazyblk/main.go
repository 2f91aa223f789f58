// Command lazyblk converts container images into lazily fetched block
// images and serves them. See README.md and `lazyblk --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
)

var version = "dev"

func main() {
	// LAZYBLK_PPROF=127.0.0.1:6060 serves net/http/pprof for profiling a
	// running command; off unless set.
	// A mount's serving process inherits it from the mount command, which
	// holds the port until it exits: the listener retries for a while.
	if addr := os.Getenv("LAZYBLK_PPROF"); addr != "" {
		go func() {
			var err error
			for range 50 {
				if err = http.ListenAndServe(addr, nil); !errors.Is(err, syscall.EADDRINUSE) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			fmt.Fprintln(os.Stderr, "lazyblk: pprof:", err)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	app := newApp()
	err := app.RunContext(ctx, flagsFirst(app, os.Args))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lazyblk:", err)
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "lazyblk",
		Usage:   "start huge container images in seconds from lazily fetched block images",
		Version: version,
		Description: `lazyblk converts an OCI image into a seekable block image (one read-only
erofs or ext4 filesystem cut into verified 4 MiB chunks), pushes it to any OCI
registry, and serves it as a block device whose chunks are fetched on first read.

Images are named as registry references (registry.example.com/app:v1) or as OCI
image layouts on disk (oci:DIR or oci:DIR:TAG).`,
		EnableBashCompletion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "debug, info, warn or error"},
		},
		Before: func(c *cli.Context) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return cli.Exit(fmt.Sprintf("--log-level %q: want debug, info, warn or error", c.String("log-level")), 2)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
		Commands: []*cli.Command{convertCommand(), inspectCommand(), diffCommand(), catCommand(), mountCommand(), umountCommand(),
			reattachCommand(), serveCommand(), fetcherCommand(), snapshotterCommand(), pullCommand(), statusCommand(), prefetchCommand(), cacheCommand(), configCommand(), completionCommand(), serveMountCommand()},
	}
}
