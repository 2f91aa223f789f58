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
after a server that crashed. Refuses, changing nothing, while DIR is busy,
and says what holds it.
Works on mounts made by the fetcher daemon too (same --state-dir).

--force does not refuse a busy DIR: the filesystem is detached at once (like
umount -l: it leaves the mount table, and the kernel frees it when its last
user lets go), reads in flight fail with EIO, and the device and serving
process go as without it. For a mount whose readers are stuck on a registry
that does not answer; processes with files open there get I/O errors.

Examples:
  lazyblk umount /mnt/app
  lazyblk umount --force /mnt/app
  lazyblk umount --state-dir /run/lazyblk /var/lib/lazyblk/snapshotter/snapshots/12/fs`,
		Flags: []cli.Flag{stateDirFlag(),
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "detach a busy mount lazily and fail its reads in flight"}},
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			if c.Bool("force") {
				return manager(c).ForceUnmount(dir)
			}
			return manager(c).Unmount(dir)
		},
	}
}
