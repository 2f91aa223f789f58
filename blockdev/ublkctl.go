package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ublk control interface (include/uapi/linux/ublk_cmd.h): commands
// are IORING_OP_URING_CMDs on /dev/ublk-control carrying a struct
// ublksrv_ctrl_cmd, with ioctl-encoded opcodes (the only ones a kernel
// built without legacy opcodes accepts).
const (
	ublkControlPath = "/dev/ublk-control"

	ublkCmdGetDevInfo    = 0x02
	ublkCmdAddDev        = 0x04
	ublkCmdDelDev        = 0x05
	ublkCmdStartDev      = 0x06
	ublkCmdStopDev       = 0x07
	ublkCmdSetParams     = 0x08
	ublkCmdStartRecovery = 0x10
	ublkCmdEndRecovery   = 0x11
	ublkCmdGetFeatures   = 0x13

	ublkIOFetchReq       = 0x20
	ublkIOCommitAndFetch = 0x21

	ublkFlagUserRecovery        = 1 << 3
	ublkFlagUserRecoveryReissue = 1 << 4
	ublkFlagCmdIoctlEncode      = 1 << 6

	ublkAttrReadOnly   = 1 << 0
	ublkParamTypeBasic = 1 << 0

	ublkStateDead     = 0
	ublkStateLive     = 1
	ublkStateQuiesced = 2

	ublkOpRead = 0

	// ublkMaxDepth is the driver's tag limit per queue; the io
	// descriptors of queue q are mapped at q times its page-rounded size.
	ublkMaxDepth = 4096
	ublkDescSize = 24 // struct ublksrv_io_desc
)

// ublkIoctl encodes a command as _IOWR('u', nr, size) — _IOR for the
// commands that only read, as the header declares them.
func ublkIoctl(nr uint32, size uintptr, write bool) uint32 {
	dir := uint32(2) // _IOC_READ
	if write {
		dir |= 1
	}
	return dir<<30 | uint32(size)<<16 | uint32('u')<<8 | nr
}

// ublkDevInfo is struct ublksrv_ctrl_dev_info.
type ublkDevInfo struct {
	NrHWQueues    uint16
	QueueDepth    uint16
	State         uint16
	Pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	ServerPID     int32
	Pad1          uint32
	Flags         uint64
	ServerFlags   uint64
	OwnerUID      uint32
	OwnerGID      uint32
	Reserved1     uint64
	Reserved2     uint64
}

// ublkParams is struct ublk_params up to the basic parameters, the only
// ones a read-only device sets; its len field tells the kernel so.
type ublkParams struct {
	Len   uint32
	Types uint32
	Basic struct {
		Attrs                                                   uint32
		LogicalBSShift, PhysicalBSShift, IOOptShift, IOMinShift uint8
		MaxSectors, ChunkSectors                                uint32
		DevSectors                                              uint64
		VirtBoundaryMask                                        uint64
	}
}

// ublkControl issues control commands, one at a time, on its own ring.
type ublkControl struct {
	f    *os.File
	ring *uring
}

// HasUblk reports whether the kernel's ublk driver is loaded here and
// this process may use io_uring (kernel.io_uring_disabled, seccomp).
func HasUblk() bool {
	if _, err := os.Stat(ublkControlPath); err != nil {
		return false
	}
	u, err := newURing(1)
	if err != nil {
		return false
	}
	u.close()
	return true
}

func openUblkControl() (*ublkControl, error) {
	f, err := os.OpenFile(ublkControlPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("blockdev: ublk: %w (is the ublk_drv module loaded?)", err)
	}
	ring, err := newURing(4)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &ublkControl{f: f, ring: ring}, nil
}

func (c *ublkControl) Close() error { return errors.Join(c.ring.close(), c.f.Close()) }

// cmd runs one control command on device id: buf, when given, is the
// command's in/out buffer; data is its inline argument. It returns the
// command's non-negative result.
func (c *ublkControl) cmd(nr uint32, id uint32, buf []byte, data uint64) (int32, error) {
	var cmd [32]byte // struct ublksrv_ctrl_cmd
	binary.LittleEndian.PutUint32(cmd[0:], id)
	binary.LittleEndian.PutUint16(cmd[4:], 0xffff) // queue_id: not a queue command
	if len(buf) > 0 {
		binary.LittleEndian.PutUint16(cmd[6:], uint16(len(buf)))
		binary.LittleEndian.PutUint64(cmd[8:], uint64(uintptr(unsafe.Pointer(&buf[0]))))
	}
	binary.LittleEndian.PutUint64(cmd[16:], data)
	write := nr != ublkCmdGetDevInfo && nr != ublkCmdGetFeatures
	if err := c.ring.uringCmd(int(c.f.Fd()), ublkIoctl(nr, 32, write), uint64(nr), cmd[:]); err != nil {
		return 0, err
	}
	if err := c.ring.submit(1); err != nil {
		return 0, err
	}
	var res int32
	c.ring.reap(func(e cqe) { res = e.Res })
	if res < 0 {
		return res, unix.Errno(-res)
	}
	return res, nil
}

// info reads device id's ublksrv_ctrl_dev_info.
func (c *ublkControl) info(id uint32) (ublkDevInfo, error) {
	var info ublkDevInfo
	b := unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info))
	_, err := c.cmd(ublkCmdGetDevInfo, id, b, 0)
	return info, err
}

// add creates a device with the driver's next free id.
func (c *ublkControl) add(queues, depth uint16, maxIO uint32, flags uint64) (ublkDevInfo, error) {
	info := ublkDevInfo{NrHWQueues: queues, QueueDepth: depth, MaxIOBufBytes: maxIO, DevID: ^uint32(0), Flags: flags}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info))
	if _, err := c.cmd(ublkCmdAddDev, ^uint32(0), b, 0); err != nil {
		return info, fmt.Errorf("blockdev: ublk: add device: %w", err)
	}
	return info, nil
}

// setParams makes device id a read-only disk of size bytes, 512-byte
// sectors over 4 KiB blocks, requests of at most maxIO bytes.
func (c *ublkControl) setParams(id uint32, size int64, maxIO uint32) error {
	var p ublkParams
	p.Len = uint32(unsafe.Sizeof(p))
	p.Types = ublkParamTypeBasic
	p.Basic.Attrs = ublkAttrReadOnly
	p.Basic.LogicalBSShift, p.Basic.PhysicalBSShift, p.Basic.IOOptShift, p.Basic.IOMinShift = 9, 12, 12, 9
	p.Basic.MaxSectors = maxIO >> 9
	p.Basic.DevSectors = uint64(size) >> 9
	b := unsafe.Slice((*byte)(unsafe.Pointer(&p)), unsafe.Sizeof(p))
	if _, err := c.cmd(ublkCmdSetParams, id, b, 0); err != nil {
		return fmt.Errorf("blockdev: ublk: set parameters of device %d: %w", id, err)
	}
	return nil
}

func (c *ublkControl) features() (uint64, error) {
	var f [8]byte
	if _, err := c.cmd(ublkCmdGetFeatures, 0, f[:], 0); err != nil {
		return 0, fmt.Errorf("blockdev: ublk: features: %w", err)
	}
	return binary.LittleEndian.Uint64(f[:]), nil
}
