package main

import (
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/mounts"
)

// serveMountCommand is the background process behind one mount: started
// with the state directory as its argument and a pipe on fd 3 for its
// report (see mounts.Serve). Hidden: nobody runs it by hand.
func serveMountCommand() *cli.Command {
	return &cli.Command{
		Name:      mounts.ServeCommand,
		Hidden:    true,
		ArgsUsage: "STATE-DIR",
		Action: func(c *cli.Context) error {
			// fd 3 came without close-on-exec; nbdfuse must not inherit
			// it, or the parent would wait for nbdfuse to close it too.
			unix.CloseOnExec(3)
			// Its stderr is the mount's serve.log: what it did (serving,
			// trace replay, stopped) belongs there, not only warnings.
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
			return mounts.Serve(c.Context, c.Args().First(), os.NewFile(3, "report"))
		},
	}
}
