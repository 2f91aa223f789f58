package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/mounts"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a block image as an NBD export (for qemu, nbd-client, nbdfuse or a microVM host)",
		ArgsUsage: "REF",
		Description: `Serves REF read-only over NBD until interrupted. The export is named REF and is
also the default export (empty name). Chunks are fetched on first read.

Examples:
  lazyblk serve --listen unix:/run/app.sock registry.local/app:v1-lazyblk
  nbdinfo 'nbd+unix:///?socket=/run/app.sock'
  lazyblk serve --listen tcp:127.0.0.1:10809 --cache-dir /var/cache/lazyblk REF
  qemu-system-x86_64 ... -drive file=nbd://127.0.0.1:10809,format=raw,readonly=on`,
		Flags: append(sourceFlags(),
			&cli.StringFlag{Name: "listen", Required: true, Usage: "unix:PATH or tcp:HOST:PORT"},
		),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("serve needs REF (see lazyblk serve --help)", 2)
	}
	src, err := sourceFromFlags(c)
	if err != nil {
		return err
	}
	network, addr, ok := strings.Cut(c.String("listen"), ":")
	if !ok || addr == "" || (network != "unix" && network != "tcp") {
		return cli.Exit(fmt.Sprintf("--listen %q: want unix:PATH or tcp:HOST:PORT", c.String("listen")), 2)
	}
	im, _, err := src.Open(c.Context)
	if err != nil {
		return err
	}
	defer im.Close()
	go mounts.TrimWhenIdle(c.Context, im)
	srv, err := blockdev.NewServer([]blockdev.Export{{Name: src.Ref, Backend: im}}, blockdev.WithLogger(slog.Default()))
	if err != nil {
		return err
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if network == "unix" {
		defer os.Remove(addr)
	}
	fmt.Fprintf(c.App.ErrWriter, "lazyblk: serving %s (%d bytes) on %s:%s\n", src.Ref, im.Size(), network, l.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err = <-done:
	case <-c.Context.Done():
	}
	srv.Close()
	st := srv.Stats()
	fmt.Fprintf(c.App.ErrWriter, "lazyblk: served %d requests, %d bytes, %d errors\n", st.Requests, st.Bytes, st.Errors)
	return err
}
