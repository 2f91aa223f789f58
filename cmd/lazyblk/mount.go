package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/blockdev"
)

func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: defaultStateDir, EnvVars: []string{"LAZYBLK_STATE_DIR"},
		Usage: "where mounts record their state"}
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a block image read-only, fetching chunks as they are read",
		ArgsUsage: "REF DIR",
		Description: `Fetches REF's chunk index (kilobytes), attaches the image as a block device and
mounts its filesystem (erofs or ext4, as converted) read-only on DIR. It returns
once DIR is mounted; a background process keeps serving reads, its state and
log under --state-dir. Take it all down with 'lazyblk umount DIR'.

Attach modes:
  netlink  the kernel's NBD driver over generic netlink (the production path;
           a restarted server takes over the device: 'lazyblk reattach DIR')
  nbdfuse  libnbd's nbdfuse exposes the device as a FUSE file; erofs mounts
           the file directly, ext4 through a loop device. For kernels without
           the nbd driver.
  auto     netlink when the nbd driver is loaded, nbdfuse otherwise (default)

Examples:
  lazyblk mount registry.local/app:v1-lazyblk /mnt/app
  lazyblk mount --cache-dir /vol1/lazyblk --cache-dir /vol2/lazyblk REF /mnt/app
  lazyblk mount --attach nbdfuse --plain-http 127.0.0.1:5000/app:v1 /mnt/app`,
		Flags: append(sourceFlags(),
			&cli.StringFlag{Name: "attach", Value: "auto", Usage: "auto, netlink or nbdfuse"},
			&cli.IntFlag{Name: "connections", Value: 4, Usage: "NBD connections serving the device"},
			&cli.DurationFlag{Name: "io-timeout", Value: 30 * time.Second, Usage: "kernel NBD: a request unanswered this long is " +
				"sent again on another connection; also how soon reads in flight resume after 'lazyblk reattach'"},
			&cli.BoolFlag{Name: "json", Usage: "print the mount's state as JSON"},
			stateDirFlag(),
		),
		Action: runMount,
	}
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
	attach := c.String("attach")
	if attach != "auto" && attach != blockdev.AttachNetlink && attach != blockdev.AttachNBDFuse {
		return cli.Exit(fmt.Sprintf("--attach %q: want auto, netlink or nbdfuse", attach), 2)
	}
	if n := c.Int("connections"); n < 1 || n > 64 {
		return cli.Exit(fmt.Sprintf("--connections %d: want 1 to 64", n), 2)
	}
	if d := c.Duration("io-timeout"); d < time.Second {
		return cli.Exit(fmt.Sprintf("--io-timeout %v: want at least 1s", d), 2)
	}
	dir, err := absDir(c.Args().Get(1))
	if err != nil {
		return err
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return cli.Exit(fmt.Sprintf("mount: %s is not a directory", dir), 2)
	}
	work := stateDirFor(c.String("state-dir"), dir)
	if st, err := readState(work); err == nil {
		if st.serverAlive(work) {
			return fmt.Errorf("mount: %s already has %s mounted (lazyblk umount %s)", dir, st.Source.Ref, dir)
		}
		return fmt.Errorf("mount: %s has state left by a server that died (lazyblk umount %s, or lazyblk reattach %s)", dir, dir, dir)
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return err
	}
	st := &mountState{Source: src, Dir: dir, Attach: attach, Connections: c.Int("connections"),
		IOTimeout: c.Duration("io-timeout"), Started: start}
	if err := st.write(work); err != nil {
		os.RemoveAll(work)
		return err
	}
	rep, err := startServer(work, true)
	if err != nil {
		return err
	}
	if rep.Note != "" {
		fmt.Fprintln(c.App.ErrWriter, "lazyblk:", rep.Note)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(rep.State)
	}
	m := rep.State.Mount
	fmt.Fprintf(c.App.Writer, "mounted %s on %s (%s via %s, %s) in %d ms\n", src.Ref, dir, m.FS, m.Attach, m.Source,
		time.Since(start).Milliseconds())
	return nil
}

// readyReport is what the serving process sends its parent once the mount
// is up (State) or has failed (Error).
type readyReport struct {
	State *mountState `json:"state,omitempty"`
	Note  string      `json:"note,omitempty"`
	Error string      `json:"error,omitempty"`
}

const serveMountCmd = "serve-mount"

// startServer starts the serving process for work in a session of its own
// (it outlives this command and the terminal) and waits for its report.
// When a fresh mount fails, everything it set up goes; when a reattach
// fails, the mount and its state stay for another try or an umount.
func startServer(work string, fresh bool) (*readyReport, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	log, err := os.OpenFile(filepath.Join(work, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(self, serveMountCmd, work)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{w} // fd 3: the report
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		if fresh {
			os.RemoveAll(work)
		}
		return nil, fmt.Errorf("start server: %w", err)
	}
	var rep readyReport
	err = json.NewDecoder(r).Decode(&rep) // one report, or EOF if it died first
	go cmd.Wait()                         // reap it if it exits while this command still runs
	if err != nil || rep.State == nil && rep.Error == "" {
		tail, _ := os.ReadFile(filepath.Join(work, "serve.log"))
		err := fmt.Errorf("server exited before it was ready:\n%s", lastLines(string(tail), 10))
		if fresh { // tear down whatever it set up
			st, _ := readState(work)
			err = errors.Join(err, teardown(work, st))
		}
		return nil, err
	}
	if rep.Error != "" {
		if fresh {
			os.RemoveAll(work)
		}
		return nil, errors.New(rep.Error)
	}
	return &rep, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func reattachCommand() *cli.Command {
	return &cli.Command{
		Name:      "reattach",
		Usage:     "start a new server for a mount whose server died; the mount stays",
		ArgsUsage: "DIR",
		Description: `The kernel keeps a device whose server died, and its queued reads, for 5 minutes.
reattach starts a new serving process that hands the device fresh connections:
reads in flight and after complete. Kernel NBD (netlink) mounts only: nbdfuse
cannot take a new server.`,
		Flags:  []cli.Flag{stateDirFlag()},
		Action: runReattach,
	}
}

func runReattach(c *cli.Context) error {
	dir, work, st, err := mountOf(c)
	if err != nil {
		return err
	}
	if st.serverAlive(work) {
		return fmt.Errorf("reattach: %s is still served by pid %d", dir, st.PID)
	}
	if st.Mount == nil || st.Mount.Device == nil {
		return fmt.Errorf("reattach: %s is not attached through the kernel's NBD driver; lazyblk umount it and mount again", dir)
	}
	if _, err := startServer(work, false); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "reattached %s to %s\n", st.Mount.Device.Path(), dir)
	return nil
}
