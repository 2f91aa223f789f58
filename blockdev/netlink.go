package blockdev

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// The kernel's NBD generic-netlink interface (include/uapi/linux/nbd-netlink.h).
const (
	nlFamily = "nbd"

	nlCmdConnect     = 1
	nlCmdDisconnect  = 2
	nlCmdReconfigure = 3

	nlAttrIndex           = 1
	nlAttrSizeBytes       = 2
	nlAttrBlockSizeBytes  = 3
	nlAttrTimeout         = 4 // seconds
	nlAttrServerFlags     = 5
	nlAttrClientFlags     = 6
	nlAttrSockets         = 7
	nlAttrDeadConnTimeout = 8 // seconds
	nlAttrBackendID       = 10

	nlSockItem = 1
	nlSockFD   = 1

	// The device disappears once disconnected, so nothing is left behind.
	nlClientDestroyOnDisconnect = 1 << 0
)

// ErrNoDriver means the kernel has no nbd driver (module not loaded or not
// built): use the nbdfuse path instead.
var ErrNoDriver = errors.New("blockdev: kernel has no nbd driver (modprobe nbd)")

// Device is a kernel NBD device, /dev/nbdINDEX.
type Device struct{ Index uint32 }

// Path is the device node.
func (d Device) Path() string { return fmt.Sprintf("/dev/nbd%d", d.Index) }

// AttachConfig describes a device to connect.
type AttachConfig struct {
	Size      int64
	BlockSize uint64 // 4096 unless set
	// Timeout fails a request the server has not answered in time (EIO to
	// the reader); zero leaves the kernel's default (30 s).
	Timeout time.Duration
	// DeadConnTimeout is how long requests wait, queued, once every
	// connection is dead, for Reconfigure to hand in fresh sockets: the
	// window in which a restarted server takes over a mounted device.
	DeadConnTimeout time.Duration
	// Backend names what the device serves (shown in
	// /sys/block/nbdN/backend); the kernel refuses a Reconfigure that
	// names another.
	Backend string
}

// HasDriver reports whether the kernel's nbd driver answers on netlink.
func HasDriver() bool {
	c, _, err := dialNBD()
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func dialNBD() (*genetlink.Conn, genetlink.Family, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, genetlink.Family{}, fmt.Errorf("blockdev: generic netlink: %w", err)
	}
	fam, err := c.GetFamily(nlFamily)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fam, ErrNoDriver
		}
		return nil, fam, fmt.Errorf("blockdev: netlink family %q: %w", nlFamily, err)
	}
	return c, fam, nil
}

func execute(cmd uint8, attrs func(*netlink.AttributeEncoder)) ([]genetlink.Message, error) {
	c, fam, err := dialNBD()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	attrs(ae)
	data, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: fam.Version},
		Data:   data,
	}, fam.ID, netlink.Request|netlink.Acknowledge)
}

func encodeSockets(ae *netlink.AttributeEncoder, socks []*os.File) {
	ae.Nested(nlAttrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, s := range socks {
			nae.Nested(nlSockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(nlSockFD, uint32(s.Fd()))
				return nil
			})
		}
		return nil
	})
}

// Attach connects a new read-only device served over socks, one kernel
// connection each. The kernel keeps its own references: the caller may
// close its copies of socks afterwards.
func Attach(cfg AttachConfig, socks []*os.File) (Device, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 4096
	}
	if len(socks) == 0 || cfg.Size <= 0 {
		return Device{}, errors.New("blockdev: attach needs a size and at least one socket")
	}
	msgs, err := execute(nlCmdConnect, func(ae *netlink.AttributeEncoder) {
		ae.Uint64(nlAttrSizeBytes, uint64(cfg.Size))
		ae.Uint64(nlAttrBlockSizeBytes, cfg.BlockSize)
		ae.Uint64(nlAttrServerFlags, uint64(transmissionFlags))
		ae.Uint64(nlAttrClientFlags, nlClientDestroyOnDisconnect)
		if cfg.Timeout > 0 {
			ae.Uint64(nlAttrTimeout, uint64(cfg.Timeout/time.Second))
		}
		if cfg.DeadConnTimeout > 0 {
			ae.Uint64(nlAttrDeadConnTimeout, uint64(cfg.DeadConnTimeout/time.Second))
		}
		if cfg.Backend != "" {
			ae.String(nlAttrBackendID, cfg.Backend)
		}
		encodeSockets(ae, socks)
	})
	if err != nil {
		return Device{}, fmt.Errorf("blockdev: nbd connect: %w", err)
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m.Data)
		if err != nil {
			return Device{}, err
		}
		for ad.Next() {
			if ad.Type() == nlAttrIndex {
				return Device{Index: ad.Uint32()}, nil
			}
		}
	}
	return Device{}, errors.New("blockdev: nbd connect: the kernel named no device")
}

// Reconfigure hands fresh sockets to a live device whose connections died
// (its server was restarted); requests queued meanwhile go to them.
func Reconfigure(d Device, backend string, socks []*os.File) error {
	_, err := execute(nlCmdReconfigure, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(nlAttrIndex, d.Index)
		if backend != "" {
			ae.String(nlAttrBackendID, backend)
		}
		encodeSockets(ae, socks)
	})
	if err != nil {
		return fmt.Errorf("blockdev: nbd reconfigure %s: %w", d.Path(), err)
	}
	return nil
}

// Detach disconnects the device; the kernel sends NBD_CMD_DISC on its
// sockets and removes the device once the last opener is gone.
func Detach(d Device) error {
	if _, err := execute(nlCmdDisconnect, func(ae *netlink.AttributeEncoder) {
		ae.Uint32(nlAttrIndex, d.Index)
	}); err != nil {
		return fmt.Errorf("blockdev: nbd disconnect %s: %w", d.Path(), err)
	}
	return nil
}
