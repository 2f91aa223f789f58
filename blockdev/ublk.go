package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AttachUblk serves the image as a ublk device (/dev/ublkbN): block
// requests reach this process through io_uring, no socket between.
const AttachUblk = "ublk"

// Ublk device shape. Depth 64 per queue keeps many misses in flight, as
// the NBD path's workers do; 256 KiB requests are twice the kernel's
// default readahead, and bound the buffers each tag holds (mapped, so
// only the pages used count: at most queues × depth × 256 KiB).
const (
	ublkDepth     = 64
	ublkMaxIO     = 256 << 10
	ublkMaxQueues = 4
	// ublkFlags: a device that outlives its server (user recovery), whose
	// requests in flight when the server died go to the next one
	// (reissue: reads are idempotent), with ioctl-encoded commands.
	ublkFlags = ublkFlagUserRecovery | ublkFlagUserRecoveryReissue | ublkFlagCmdIoctlEncode
)

// UblkDevice is a ublk device by id: /dev/ublkbN, served through the
// character device /dev/ublkcN.
type UblkDevice struct {
	ID uint32 `json:"id"`
}

// Path is the block device.
func (d UblkDevice) Path() string { return fmt.Sprintf("/dev/ublkb%d", d.ID) }

func (d UblkDevice) charPath() string { return fmt.Sprintf("/dev/ublkc%d", d.ID) }

// ublkServer serves one device's queues in this process: one goroutine
// per queue, locked to its thread (the driver takes every command of a
// queue from the thread that fetched first).
type ublkServer struct {
	srv  *Server
	e    *Export
	dev  UblkDevice
	char *os.File
	wg   sync.WaitGroup // the queue goroutines

	mu     sync.Mutex // guards queues
	queues []*ublkQueue
}

// attachUblk creates a read-only ublk device of size bytes serving
// export, and starts it: when it returns, Path exists and reads work.
// On error nothing is left behind.
func attachUblk(srv *Server, export string, size int64) (u *ublkServer, err error) {
	e, ctl, err := ublkExport(srv, export)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	if feat, err := ctl.features(); err != nil {
		return nil, err
	} else if feat&ublkFlags != ublkFlags {
		return nil, fmt.Errorf("blockdev: ublk: the driver lacks user recovery with reissue (features %#x)", feat)
	}
	queues := uint16(min(runtime.NumCPU(), ublkMaxQueues))
	info, err := ctl.add(queues, ublkDepth, ublkMaxIO, ublkFlags)
	if err != nil {
		return nil, err
	}
	u = &ublkServer{srv: srv, e: e, dev: UblkDevice{ID: info.DevID}}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.close(), deleteUblk(ctl, u.dev))
			u = nil
		}
	}()
	if err := ctl.setParams(u.dev.ID, size, ublkMaxIO); err != nil {
		return u, err
	}
	if err := u.start(info); err != nil {
		return u, err
	}
	if _, err := ctl.cmd(ublkCmdStartDev, u.dev.ID, nil, uint64(os.Getpid())); err != nil {
		return u, fmt.Errorf("blockdev: ublk: start device %d: %w", u.dev.ID, err)
	}
	return u, nil
}

// ublkRecoverTimeout bounds how long a recovery waits for the device to
// notice its old server died (it quiesces once that server's io_uring is
// gone, moments after the process).
const ublkRecoverTimeout = 10 * time.Second

// recoverUblk hands a live device whose server died to this process:
// requests the old server held, and those queued since, are served here.
func recoverUblk(srv *Server, export string, d UblkDevice) (u *ublkServer, err error) {
	e, ctl, err := ublkExport(srv, export)
	if err != nil {
		return nil, err
	}
	defer ctl.Close()
	var info ublkDevInfo
	err = poll(ublkRecoverTimeout, func() (bool, error) {
		if info, err = ctl.info(d.ID); err != nil {
			return true, err // no such device: nothing to wait for
		}
		_, err := ctl.cmd(ublkCmdStartRecovery, d.ID, nil, 0)
		return !errors.Is(err, unix.EBUSY), err
	})
	if err != nil {
		return nil, fmt.Errorf("blockdev: ublk: recover device %d (state %s, server pid %d): %w",
			d.ID, ublkStateName(info.State), info.ServerPID, err)
	}
	u = &ublkServer{srv: srv, e: e, dev: d}
	if err := u.start(info); err != nil {
		return nil, errors.Join(err, u.close())
	}
	if _, err := ctl.cmd(ublkCmdEndRecovery, d.ID, nil, uint64(os.Getpid())); err != nil {
		return nil, errors.Join(fmt.Errorf("blockdev: ublk: end recovery of device %d: %w", d.ID, err), u.close())
	}
	return u, nil
}

// ublkExport finds export on srv and opens the control device.
func ublkExport(srv *Server, export string) (*Export, *ublkControl, error) {
	e := srv.lookup(export)
	if e == nil {
		return nil, nil, fmt.Errorf("blockdev: no export named %q", export)
	}
	ctl, err := openUblkControl()
	return e, ctl, err
}

func ublkStateName(s uint16) string {
	switch s {
	case ublkStateDead:
		return "dead"
	case ublkStateLive:
		return "live"
	case ublkStateQuiesced:
		return "quiesced"
	}
	return fmt.Sprint(s)
}

// start opens the character device and starts every queue; it returns
// once each queue has fetched on all its tags, which the driver waits
// for before it starts (or recovers) the device.
func (u *ublkServer) start(info ublkDevInfo) error {
	err := poll(2*time.Second, func() (done bool, err error) { // devtmpfs or udev makes the node
		u.char, err = os.OpenFile(u.dev.charPath(), os.O_RDWR, 0)
		return !errors.Is(err, os.ErrNotExist), err
	})
	if err != nil {
		return fmt.Errorf("blockdev: ublk: %w", err)
	}
	ready := make(chan error, info.NrHWQueues)
	u.mu.Lock()
	for q := range info.NrHWQueues {
		queue := &ublkQueue{u: u, id: q, depth: int(info.QueueDepth), maxIO: int(info.MaxIOBufBytes)}
		u.queues = append(u.queues, queue)
		u.wg.Add(1)
		go func() { defer u.wg.Done(); queue.run(ready) }()
	}
	u.mu.Unlock()
	var errs []error
	for range info.NrHWQueues {
		errs = append(errs, <-ready)
	}
	return errors.Join(errs...)
}

// close stops the queues and waits for them; requests being answered
// finish first (Server.Close makes them fail fast).
func (u *ublkServer) close() error {
	u.mu.Lock()
	for _, q := range u.queues {
		q.stop()
	}
	u.mu.Unlock()
	u.wg.Wait()
	if u.char != nil {
		return u.char.Close()
	}
	return nil
}

// detachUblk stops and deletes device d, stopping its queues in this
// process (local, when it serves it) in between: the driver deletes a
// device only once its character device is closed. A device already
// gone is not an error.
func detachUblk(d UblkDevice, local *ublkServer) error {
	ctl, err := openUblkControl()
	if err != nil {
		return err
	}
	defer ctl.Close()
	if _, err := ctl.cmd(ublkCmdStopDev, d.ID, nil, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("blockdev: ublk: stop device %d: %w", d.ID, err)
	}
	if local != nil {
		if err := local.close(); err != nil {
			return err
		}
	}
	return deleteUblk(ctl, d)
}

func deleteUblk(ctl *ublkControl, d UblkDevice) error {
	if _, err := ctl.cmd(ublkCmdDelDev, d.ID, nil, 0); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("blockdev: ublk: delete device %d: %w", d.ID, err)
	}
	return nil
}

// ublkCommand is struct ublksrv_io_cmd: which request, its result, and
// the buffer the next request of the tag uses.
func ublkCommand(q, tag uint16, result int32, addr uint64) []byte {
	var c [16]byte
	binary.LittleEndian.PutUint16(c[0:], q)
	binary.LittleEndian.PutUint16(c[2:], tag)
	binary.LittleEndian.PutUint32(c[4:], uint32(result))
	binary.LittleEndian.PutUint64(c[8:], addr)
	return c[:]
}

// poll calls try until it says done, backing off from 1 ms to 50 ms, for
// at most timeout; it returns try's last error. For the driver's states
// and device nodes, which have no event to wait on.
func poll(timeout time.Duration, try func() (done bool, err error)) error {
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		done, err := try()
		if done || time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
	}
}
