package main

import (
	"github.com/urfave/cli/v2"
)

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount a lazyblk mount and stop everything behind it",
		ArgsUsage: "DIR",
		Description: `Unmounts DIR, detaches its block device (kernel NBD device, or nbdfuse and its
loop device), stops the serving process and removes the state. Also cleans up
after a server that crashed. Refuses, changing nothing, while DIR is busy.
Works on mounts made by the fetcher daemon too (same --state-dir).

Examples:
  lazyblk umount /mnt/app
  lazyblk umount --state-dir /run/lazyblk /var/lib/lazyblk/snapshotter/snapshots/12/fs`,
		Flags: []cli.Flag{stateDirFlag()},
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			return manager(c).Unmount(dir)
		},
	}
}
