package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/fetcher"
)

// deviceDeadConnTimeout is how long a kernel device whose server died
// keeps its requests queued for 'lazyblk reattach'. Requests already sent
// to the dead server are not requeued at once: the kernel re-sends them
// when their I/O timeout (--io-timeout) expires (observed on 6.12:
// "Connection timed out, retrying").
const deviceDeadConnTimeout = 5 * time.Minute

// serveMountCommand is the background process behind one mount: started by
// mount (or reattach) with the state directory as its argument and a pipe
// on fd 3 for its report. Hidden: nobody runs it by hand.
func serveMountCommand() *cli.Command {
	return &cli.Command{
		Name:      serveMountCmd,
		Hidden:    true,
		ArgsUsage: "STATE-DIR",
		Action:    runServeMount,
	}
}

func runServeMount(c *cli.Context) error {
	work := c.Args().First()
	// fd 3 came without close-on-exec; nbdfuse must not inherit it, or
	// the parent would wait for nbdfuse to close it too.
	unix.CloseOnExec(3)
	report := os.NewFile(3, "report")
	say := func(rep readyReport) {
		if report != nil {
			json.NewEncoder(report).Encode(rep)
			report.Close()
			report = nil
		}
	}
	srv, im, st, err := setUp(c, work)
	if err != nil {
		say(readyReport{Error: err.Error()})
		return err
	}
	defer im.Close()
	defer srv.Close()
	note := ""
	if st.Mount.Attach == blockdev.AttachNBDFuse && st.Attach == "auto" {
		note = "kernel has no nbd driver: mounted through nbdfuse (a userspace NBD client) instead"
	}
	say(readyReport{State: st, Note: note})
	slog.Info("serving", "ref", st.Source.Ref, "dir", st.Dir, "source", st.Mount.Source)

	<-c.Context.Done() // SIGTERM from umount, or SIGINT
	err = st.Mount.Unmount()
	slog.Info("stopped", "dir", st.Dir, "stats", fmt.Sprintf("%+v", srv.Stats()), "err", err)
	if err == nil {
		err = os.RemoveAll(work)
	}
	return err
}

// setUp opens the image, starts the NBD server and mounts (or, when the
// state already records a device, hands it fresh connections), then
// records this process as the server.
func setUp(c *cli.Context, work string) (*blockdev.Server, *fetcher.Image, *mountState, error) {
	st, err := readState(work)
	if err != nil {
		return nil, nil, nil, err
	}
	im, err := st.Source.open(c.Context)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("mount %s: %w", st.Source.Ref, err)
	}
	srv, err := blockdev.NewServer([]blockdev.Export{{Name: st.Source.Ref, Backend: im}},
		blockdev.WithLogger(slog.Default()))
	if err != nil {
		im.Close()
		return nil, nil, nil, err
	}
	fail := func(err error) (*blockdev.Server, *fetcher.Image, *mountState, error) {
		srv.Close()
		im.Close()
		return nil, nil, nil, err
	}
	fresh := st.Mount == nil
	if !fresh {
		if err := blockdev.Reattach(srv, st.Source.Ref, st.Mount, st.Connections); err != nil {
			return fail(fmt.Errorf("reattach %s: %w", st.Dir, err))
		}
	} else {
		attach := st.Attach
		if attach == "auto" {
			attach = blockdev.AttachNBDFuse
			if blockdev.HasDriver() {
				attach = blockdev.AttachNetlink
			}
		}
		m, err := blockdev.MountImage(srv, st.Source.Ref, im.Size(), blockdev.MountConfig{
			Dir: st.Dir, FS: im.Index().FS.String(), Attach: attach, Work: work, Connections: st.Connections,
			Timeout: st.IOTimeout, DeadConnTimeout: deviceDeadConnTimeout, Backend: st.Source.Ref,
		})
		if err != nil {
			return fail(fmt.Errorf("mount %s on %s: %w", st.Source.Ref, st.Dir, err))
		}
		st.Mount = m
	}
	st.PID = os.Getpid()
	if err := st.write(work); err != nil {
		if fresh { // a reattach leaves the user's mount alone
			err = errors.Join(err, st.Mount.Unmount())
		}
		return fail(err)
	}
	return srv, im, st, nil
}
