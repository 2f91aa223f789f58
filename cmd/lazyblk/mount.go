package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc/status"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/mounts"
)

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a block image read-only, fetching chunks as they are read",
		ArgsUsage: "REF DIR",
		Description: `Fetches REF's chunk index (kilobytes), attaches the image as a block device and
mounts its filesystem (erofs or ext4, as converted) read-only on DIR. It returns
once DIR is mounted; a background process keeps serving reads, its state and
log under --state-dir. Take it all down with 'lazyblk umount DIR'.

When a fetcher daemon (lazyblk fetcher) answers at --fetcher-address, it makes
the mount, reading through its cache and under its [prefetch] configuration;
--cache-dir or --state-dir ask for a mount of this command's own instead.

With a cache, reads are not all that is fetched. Below them, and never in
their way: first the chunks of the image's prefetch trace, when the registry
holds one (lazyblk prefetch), in recorded order; then, for images up to
--fill-below, every other chunk, so a start-up that reads everything is never
slower than a plain pull.

The filesystem is mounted ro,nosuid,nodev: set-uid bits and device files of
the image have no effect unless -o suid or -o dev says otherwise.

Attach modes:
  ublk     the kernel's ublk driver (Linux 6.0+, module ublk_drv): requests
           reach this process through io_uring, several queues, no socket;
           a restarted server takes the device over: 'lazyblk reattach DIR'
  netlink  the kernel's NBD driver over generic netlink (a restarted server
           takes over the device too: 'lazyblk reattach DIR')
  nbdfuse  libnbd's nbdfuse exposes the device as a FUSE file; erofs mounts
           the file directly, ext4 through a loop device. For kernels without
           either driver.
  auto     ublk when ublk_drv is loaded, else netlink when nbd is, else
           nbdfuse (default); the mount's output says which it took

Examples:
  lazyblk mount registry.local/app:v1-lazyblk /mnt/app
  lazyblk mount --cache-dir /vol1/lazyblk --cache-dir /vol2/lazyblk REF /mnt/app
  lazyblk mount --attach nbdfuse --plain-http 127.0.0.1:5000/app:v1 /mnt/app
  lazyblk mount -o dev,suid REF /mnt/root && chroot /mnt/root /bin/sh`,
		Flags: append(sourceFlags(),
			&cli.StringFlag{Name: "attach", Value: "auto", Usage: "auto, ublk, netlink or nbdfuse"},
			&cli.IntFlag{Name: "connections", Value: 4, Usage: "NBD connections serving the device (ublk: one queue per CPU, up to 4)"},
			&cli.DurationFlag{Name: "io-timeout", Value: 30 * time.Second, Usage: "kernel NBD: a request unanswered this long is " +
				"sent again on another connection; also how soon reads in flight resume after 'lazyblk reattach'"},
			&cli.StringFlag{Name: "options", Aliases: []string{"o"}, Usage: "mount(8) options over the defaults " +
				blockdev.DefaultMountOptions + ", like -o dev,suid for a chroot that needs /dev/null; " +
				"others go to the filesystem (erofs: user_xattr, acl); rw is refused"},
			&cli.BoolFlag{Name: "no-trace", Usage: "do not replay the image's prefetch trace (see lazyblk prefetch)"},
			&cli.StringFlag{Name: "fill-below", Value: "8GiB", Usage: "fetch the whole image in the background when it is at most this big (0: never)"},
			&cli.StringFlag{Name: "fill-rate", Value: "0", Usage: "bytes per second for trace replay and fill, like 200MiB (0: unlimited)"},
			&cli.BoolFlag{Name: "json", Usage: "print the mount as JSON"},
			stateDirFlag(),
			fetcherAddressFlag(),
		),
		Action: runMount,
	}
}

// mountReport is what mount prints, whoever made the mount.
type mountReport struct {
	Ref     string `json:"ref"`
	Dir     string `json:"dir"`
	FS      string `json:"fs"`
	Attach  string `json:"attach"`
	Device  string `json:"device"`
	PID     int    `json:"pid"`
	ReadyMS int64  `json:"readyMs"`
	Daemon  string `json:"daemon,omitempty"` // the fetcher daemon's socket, when it made the mount
}

func runMount(c *cli.Context) error {
	start := time.Now()
	if c.NArg() != 2 {
		return cli.Exit("mount needs REF and DIR (see lazyblk mount --help)", 2)
	}
	src, err := sourceFromFlags(c)
	if err != nil {
		return err
	}
	dir, err := mounts.AbsDir(c.Args().Get(1))
	if err != nil {
		return err
	}
	bg, err := backgroundFromFlags(c)
	if err != nil {
		return err
	}
	req := mounts.Request{Source: src, Dir: dir, Attach: c.String("attach"), Connections: c.Int("connections"),
		IOTimeout: c.Duration("io-timeout"), Options: c.String("options"), Exclusive: true, Background: bg}
	if err := req.Check(); err != nil {
		var fe *mounts.FieldError
		if errors.As(err, &fe) {
			fe.Field = "--" + fe.Field
		}
		return cli.Exit("mount: "+err.Error(), 2)
	}
	var rep mountReport
	if addr := c.String("fetcher-address"); addr != "" && !c.IsSet("state-dir") && !c.IsSet("cache-dir") && fetcherd.Running(addr) {
		rep, err = mountThroughDaemon(c, addr, req)
	} else {
		rep, err = mountHere(c, req)
	}
	if err != nil {
		return err
	}
	rep.ReadyMS = time.Since(start).Milliseconds()
	return printMount(c.App.Writer, c.Bool("json"), rep)
}

func mountHere(c *cli.Context, req mounts.Request) (mountReport, error) {
	st, note, err := manager(c).Mount(c.Context, req)
	if err != nil {
		return mountReport{}, err
	}
	if note != "" {
		fmt.Fprintln(c.App.ErrWriter, "lazyblk:", note)
	}
	m := st.Mount
	return mountReport{Ref: st.Source.Ref, Dir: st.Dir, FS: m.FS, Attach: m.Attach, Device: m.Source, PID: st.PID}, nil
}

func mountThroughDaemon(c *cli.Context, addr string, req mounts.Request) (mountReport, error) {
	client, cc, err := fetcherd.Dial(addr)
	if err != nil {
		return mountReport{}, err
	}
	defer cc.Close()
	mi, err := client.Mount(c.Context, &fetcherv1.MountRequest{Ref: req.Source.Ref, Dir: req.Dir, PlainHttp: req.Source.PlainHTTP,
		Attach: req.Attach, Connections: int32(req.Connections), IoTimeoutMs: req.IOTimeout.Milliseconds(), Options: req.Options, Exclusive: true})
	if err != nil {
		return mountReport{}, daemonError(addr, err)
	}
	return mountReport{Ref: mi.Ref, Dir: mi.Dir, FS: mi.Fs, Attach: mi.Attach, Device: mi.Device, PID: int(mi.Pid), Daemon: addr}, nil
}

// daemonError turns a gRPC status into the daemon's own message.
func daemonError(addr string, err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("fetcher daemon (%s): %s", addr, s.Message())
	}
	return err
}

func printMount(w io.Writer, asJSON bool, r mountReport) error {
	if asJSON {
		return printJSON(w, r)
	}
	via := ""
	if r.Daemon != "" {
		via = ", by the fetcher daemon"
	}
	_, err := fmt.Fprintf(w, "mounted %s on %s (%s via %s, %s%s) in %d ms\n", r.Ref, r.Dir, r.FS, r.Attach, r.Device, via, r.ReadyMS)
	return err
}

func reattachCommand() *cli.Command {
	return &cli.Command{
		Name:      "reattach",
		Usage:     "start a new server for a mount whose server died; the mount stays",
		ArgsUsage: "DIR",
		Description: `The kernel keeps a device whose server died, and its queued reads, for 5 minutes.
reattach starts a new serving process that takes the device over (fresh
connections for kernel NBD, a user recovery for ublk): reads in flight and
after complete. Kernel NBD (netlink) and ublk mounts only: nbdfuse cannot take
a new server. A fetcher daemon does this for every such mount when
it starts.

Examples:
  lazyblk reattach /mnt/app
  lazyblk reattach --state-dir /run/lazyblk /mnt/app`,
		Flags: []cli.Flag{stateDirFlag()},
		Action: func(c *cli.Context) error {
			dir, err := dirArg(c)
			if err != nil {
				return err
			}
			st, err := manager(c).Reattach(c.Context, dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "reattached %s to %s\n", st.Mount.Source, dir)
			return nil
		},
	}
}

// dirArg reads the DIR argument of umount and reattach.
func dirArg(c *cli.Context) (string, error) {
	name := c.Command.Name
	if c.NArg() != 1 {
		return "", cli.Exit(fmt.Sprintf("%s needs DIR (see lazyblk %s --help)", name, name), 2)
	}
	return mounts.AbsDir(c.Args().First())
}
