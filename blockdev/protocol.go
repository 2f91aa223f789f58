package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants go-nbd's protocol package does not define, from the NBD
// protocol document (doc/proto.md of NetworkBlockDevice/nbd).
const (
	flagNoZeroes = uint16(1 << 1) // handshake: no 124 zero bytes after NBD_OPT_EXPORT_NAME

	clientFixedNewstyle = uint32(1 << 0)
	clientNoZeroes      = uint32(1 << 1)

	optExportName = uint32(1)
	optStartTLS   = uint32(5)

	repErrInvalid = uint32(3 | 1<<31)
	repErrTLSReqd = uint32(5 | 1<<31)

	flagReadOnly  = uint16(1 << 1)
	flagSendFlush = uint16(1 << 2)

	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)

	errEIO       = uint32(5)
	errESHUTDOWN = uint32(108)

	// maxOption bounds an option's payload: names are at most 4096 bytes
	// and NBD_OPT_GO adds a few info requests, so anything larger is a
	// client out of sync or hostile.
	maxOption = 16 << 10
)

// transmissionFlags are advertised for every export: read-only, safe for
// several connections at once (reads see the same bytes on any connection),
// and flush accepted (a no-op) because some clients send it regardless.
const transmissionFlags = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS | flagReadOnly | flagSendFlush |
	protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN

// ErrProtocol marks a client that broke the protocol; the connection is
// closed because the byte stream can no longer be trusted.
var ErrProtocol = errors.New("blockdev: NBD protocol violation")

func writeBE(w io.Writer, vs ...any) error {
	for _, v := range vs {
		if err := binary.Write(w, binary.BigEndian, v); err != nil {
			return err
		}
	}
	return nil
}

func readBE(r io.Reader, vs ...any) error {
	for _, v := range vs {
		if err := binary.Read(r, binary.BigEndian, v); err != nil {
			return err
		}
	}
	return nil
}

// request is one transmission-phase request header, decoded.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
}

const requestSize = 28

func decodeRequest(b []byte) (request, error) {
	if magic := binary.BigEndian.Uint32(b[0:4]); magic != protocol.TRANSMISSION_MAGIC_REQUEST {
		return request{}, fmt.Errorf("%w: request magic %#x", ErrProtocol, magic)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		off:    binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// replyHeader encodes a simple reply into the first 16 bytes of b.
func replyHeader(b []byte, handle uint64, errno uint32) {
	binary.BigEndian.PutUint32(b[0:4], protocol.TRANSMISSION_MAGIC_REPLY)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}
