package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/blockdev"
)

// serverStopTimeout bounds the wait for a serving process to finish after
// SIGTERM: it unmounts and detaches, which takes milliseconds unless the
// kernel is stuck on a dead registry.
const serverStopTimeout = 30 * time.Second

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount a lazyblk mount and stop everything behind it",
		ArgsUsage: "DIR",
		Description: `Unmounts DIR, detaches its block device (kernel NBD device, or nbdfuse and its
loop device), stops the serving process and removes the state. Also cleans up
after a server that crashed. Refuses, changing nothing, while DIR is busy.`,
		Flags:  []cli.Flag{stateDirFlag()},
		Action: runUmount,
	}
}

func runUmount(c *cli.Context) error {
	dir, work, st, err := mountOf(c)
	if err != nil {
		return err
	}
	// The filesystem first, so a busy mountpoint fails the command before
	// anything else is touched.
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("umount: %s: %w", dir, err)
	}
	if st.serverAlive(work) {
		if err := blockdev.StopProcess(st.PID, unix.SIGTERM, serverStopTimeout); err != nil {
			return fmt.Errorf("umount: stop server: %w", err)
		}
		// A server that stopped cleanly took everything down itself.
		if st, err = readState(work); errors.Is(err, os.ErrNotExist) {
			return teardown(work, nil)
		}
	}
	return teardown(work, st)
}

// teardown removes whatever a mount still holds (device, nbdfuse, state);
// safe when parts are already gone.
func teardown(work string, st *mountState) error {
	if st != nil && st.Mount != nil {
		if err := st.Mount.Unmount(); err != nil {
			return fmt.Errorf("umount %s: %w (state kept in %s)", st.Dir, err, work)
		}
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	os.Remove(filepath.Dir(work)) // the mounts directory, when this was the last
	return nil
}
