package blockdev

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Attach modes.
const (
	AttachNetlink = "netlink" // kernel NBD device over generic netlink
	AttachNBDFuse = "nbdfuse" // libnbd's nbdfuse: a FUSE file, then file-backed erofs or a loop device
)

// AutoAttach is the attach mode auto stands for on this kernel: ublk
// when its driver is loaded, else the kernel's NBD driver, else nbdfuse.
func AutoAttach() string {
	switch {
	case HasUblk():
		return AttachUblk
	case HasDriver():
		return AttachNetlink
	}
	return AttachNBDFuse
}

// MountConfig says where and how to mount an export.
type MountConfig struct {
	Dir    string // the read-only filesystem goes here
	FS     string // "erofs" or "ext4"
	Attach string // AttachUblk, AttachNetlink or AttachNBDFuse
	// Work is a private directory for the NBD socket, nbdfuse's pid file
	// and its FUSE mountpoint; it must outlive the mount.
	Work        string
	Connections int // NBD connections (4 unless set)
	// Timeout and DeadConnTimeout configure a kernel device (see
	// AttachConfig); nbdfuse has neither.
	Timeout         time.Duration
	DeadConnTimeout time.Duration
	Backend         string // identifier a Reattach must repeat
	// Options are mount(8) options over DefaultMountOptions
	// (ParseMountOptions).
	Options string
}

// Mount records what MountImage set up, in enough detail for Unmount to
// take it down from another process after the server crashed. It is
// stored as JSON by the CLI.
type Mount struct {
	Dir     string      `json:"dir"`
	FS      string      `json:"fs"`
	Attach  string      `json:"attach"`
	Work    string      `json:"work"`
	Source  string      `json:"source"`           // what is mounted on Dir
	Device  *Device     `json:"device,omitempty"` // netlink
	Ublk    *UblkDevice `json:"ublk,omitempty"`
	FusePID int         `json:"fusePid,omitempty"`
	Backend string      `json:"backend,omitempty"`

	fuse       *exec.Cmd   // nbdfuse, when this process started it
	fuseExited chan error  // its exit status
	ublk       *ublkServer // the ublk device's queues, when this process serves them
}

// Recoverable says whether a new server can take the device over after
// its server died (Reattach): kernel NBD and ublk devices can.
func (m *Mount) Recoverable() bool { return m.Device != nil || m.Ublk != nil }

// fuseDir is nbdfuse's mountpoint inside Work; nothing else may live in it
// (nbdfuse takes the whole directory over).
func (m *Mount) fuseDir() string { return filepath.Join(m.Work, "fuse") }

// MountImage attaches export of srv (size bytes) and mounts its filesystem
// read-only on cfg.Dir. On error nothing is left attached or mounted.
func MountImage(srv *Server, export string, size int64, cfg MountConfig) (m *Mount, err error) {
	if cfg.FS != "erofs" && cfg.FS != "ext4" {
		return nil, fmt.Errorf("blockdev: cannot mount filesystem %q", cfg.FS)
	}
	flags, data, err := ParseMountOptions(cfg.Options)
	if err != nil {
		return nil, err
	}
	if cfg.Connections <= 0 {
		cfg.Connections = 4
	}
	m = &Mount{Dir: cfg.Dir, FS: cfg.FS, Attach: cfg.Attach, Work: cfg.Work, Backend: cfg.Backend}
	defer func() {
		if err != nil { // mount(2) is the last step: Dir was never ours
			err = errors.Join(err, m.detach())
			m = nil
		}
	}()
	switch cfg.Attach {
	case AttachNetlink:
		socks, err := transmitPairs(srv, export, cfg.Connections)
		if err != nil {
			return m, err
		}
		d, err := Attach(AttachConfig{Size: size, Timeout: cfg.Timeout, DeadConnTimeout: cfg.DeadConnTimeout,
			Backend: cfg.Backend}, socks)
		closeAll(socks)
		if err != nil {
			return m, err
		}
		m.Device, m.Source = &d, d.Path()
	case AttachNBDFuse:
		if err := m.startFuse(srv, cfg.Connections); err != nil {
			return m, err
		}
	case AttachUblk:
		u, err := attachUblk(srv, export, size)
		if err != nil {
			return m, err
		}
		m.ublk, m.Ublk, m.Source = u, &u.dev, u.dev.Path()
	default:
		return m, fmt.Errorf("blockdev: unknown attach mode %q", cfg.Attach)
	}
	source := m.Source
	if cfg.FS == "ext4" && cfg.Attach == AttachNBDFuse {
		// ext4 cannot mount a file; a read-only loop device that clears
		// itself once unmounted stands in. It stays open until mounted:
		// its last close would clear it.
		loop, err := loopAttach(m.Source)
		if err != nil {
			return m, err
		}
		defer loop.Close()
		source = loop.Name()
	}
	if err := unix.Mount(source, cfg.Dir, cfg.FS, flags, data); err != nil {
		return m, fmt.Errorf("blockdev: mount %s (%s, options %q) on %s: %w", source, cfg.FS, cfg.Options, cfg.Dir, err)
	}
	return m, nil
}

// Reattach hands a device whose server died to srv: fresh connections for
// a kernel NBD device, a recovery for a ublk device.
func Reattach(srv *Server, export string, m *Mount, connections int) error {
	if m.Ublk != nil {
		u, err := recoverUblk(srv, export, *m.Ublk)
		if err != nil {
			return err
		}
		m.ublk = u
		return nil
	}
	if m.Device == nil {
		return fmt.Errorf("blockdev: %s is attached through %s, which cannot take a new server", m.Dir, m.Attach)
	}
	socks, err := transmitPairs(srv, export, connections)
	if err != nil {
		return err
	}
	defer closeAll(socks)
	return Reconfigure(*m.Device, m.Backend, socks)
}

// transmitPairs makes n socketpairs, serves export on one end of each and
// returns the other ends for the kernel.
func transmitPairs(srv *Server, export string, n int) ([]*os.File, error) {
	var socks []*os.File
	for range n {
		conn, kernel, err := Socketpair()
		if err != nil {
			closeAll(socks)
			return nil, err
		}
		socks = append(socks, kernel)
		go func(c net.Conn) {
			if err := srv.Transmit(c, export); err != nil {
				srv.opts.log.Warn("nbd kernel connection ended", "export", export, "err", err)
			}
		}(conn)
	}
	return socks, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Unmount takes down everything MountImage set up, in reverse: the
// filesystem (refusing if busy), the kernel device or the loop device and
// nbdfuse. Parts already gone are skipped, so it also cleans up after a
// crash and is safe to repeat.
func (m *Mount) Unmount() error {
	if err := unix.Unmount(m.Dir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("blockdev: unmount %s: %w", m.Dir, err)
	}
	return m.detach()
}

// detach releases the device under the filesystem: the ublk device, the
// kernel NBD device, or nbdfuse (a loop device on its file clears itself).
func (m *Mount) detach() error {
	if m.Ublk != nil {
		if err := detachUblk(*m.Ublk, m.ublk); err != nil {
			return err
		}
		m.ublk = nil
	}
	if m.Device != nil {
		if err := Detach(*m.Device); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return err
		}
	}
	if m.Attach == AttachNBDFuse {
		return m.stopFuse()
	}
	return nil
}

// loopAttach binds a read-only loop device to file and returns it open.
// The device clears itself on its last close: when the filesystem on it is
// unmounted, or when the caller closes it without mounting.
func loopAttach(file string) (*os.File, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("blockdev: loop: %w", err)
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("blockdev: loop: %w", err)
	}
	defer ctl.Close()
	for range 8 { // another process may take the free device first
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("blockdev: loop: get free device: %w", err)
		}
		dev, err := os.OpenFile(fmt.Sprintf("/dev/loop%d", n), os.O_RDONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("blockdev: loop: %w", err)
		}
		cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		err = unix.IoctlLoopConfigure(int(dev.Fd()), &cfg)
		if err == nil {
			return dev, nil
		}
		dev.Close()
		if !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("blockdev: loop: configure %s: %w", dev.Name(), err)
		}
	}
	return nil, errors.New("blockdev: loop: no free loop device after 8 tries")
}
