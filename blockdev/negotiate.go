package blockdev

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// negotiate runs the fixed-newstyle handshake and returns the export the
// client chose, or nil when the client ended the session (NBD_OPT_ABORT or
// a closed connection during negotiation), with the connection and reader
// to go on with: a TLS connection once the client started TLS. A server
// WithTLS answers nothing but NBD_OPT_STARTTLS and NBD_OPT_ABORT before.
func (s *Server) negotiate(conn net.Conn, r *bufio.Reader) (net.Conn, *bufio.Reader, *Export, error) {
	e, err := s.options(&conn, &r)
	return conn, r, e, err
}

func (s *Server) options(connp *net.Conn, rp **bufio.Reader) (*Export, error) {
	conn, r := *connp, *rp
	encrypted := false
	if err := writeBE(conn, protocol.NegotiationNewstyleHeader{
		OldstyleMagic:  protocol.NEGOTIATION_MAGIC_OLDSTYLE, // "NBDMAGIC"
		OptionMagic:    protocol.NEGOTIATION_MAGIC_OPTION,   // "IHAVEOPT"
		HandshakeFlags: protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE | flagNoZeroes,
	}); err != nil {
		return nil, err
	}
	var cflags uint32
	if err := readBE(r, &cflags); err != nil {
		return nil, err
	}
	if cflags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, cflags)
	}
	for {
		var h protocol.NegotiationOptionHeader
		if err := readBE(r, &h); err != nil {
			return nil, err
		}
		if h.OptionMagic != protocol.NEGOTIATION_MAGIC_OPTION {
			return nil, fmt.Errorf("%w: option magic %#x", ErrProtocol, h.OptionMagic)
		}
		if h.Length > maxOption {
			return nil, fmt.Errorf("%w: option %d carries %d bytes", ErrProtocol, h.ID, h.Length)
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		if s.opts.tls != nil && !encrypted {
			switch h.ID {
			case optStartTLS:
				if len(data) != 0 {
					if err := reply(conn, h.ID, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data")); err != nil {
						return nil, err
					}
					continue
				}
				if err := reply(conn, h.ID, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil); err != nil {
					return nil, err
				}
				tc, err := s.startTLS(conn)
				if err != nil {
					return nil, err
				}
				conn, r, encrypted = tc, bufio.NewReaderSize(tc, 64<<10), true
				*connp, *rp = conn, r
				continue
			case protocol.NEGOTIATION_ID_OPTION_ABORT:
			case optExportName: // no reply is possible here: the connection ends
				return nil, errors.New("client asked for an export without starting TLS, which this server requires")
			default:
				if err := reply(conn, h.ID, repErrTLSReqd, []byte("this server requires TLS: start it first (NBD_OPT_STARTTLS)")); err != nil {
					return nil, err
				}
				continue
			}
		}
		switch h.ID {
		case optStartTLS:
			msg := "TLS is not configured on this server"
			if encrypted {
				msg = "TLS is already started"
			}
			if err := reply(conn, h.ID, repErrInvalid, []byte(msg)); err != nil {
				return nil, err
			}
		case optExportName:
			// The oldest way in: no reply on an unknown name, just a
			// closed connection, as the protocol prescribes.
			e := s.lookup(string(data))
			if e == nil {
				return nil, fmt.Errorf("client asked for unknown export %q", data)
			}
			var b bytes.Buffer
			_ = writeBE(&b, uint64(e.Backend.Size()), transmissionFlags)
			if cflags&clientNoZeroes == 0 {
				b.Write(make([]byte, 124))
			}
			_, err := conn.Write(b.Bytes())
			return e, err
		case protocol.NEGOTIATION_ID_OPTION_ABORT:
			_ = reply(conn, h.ID, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil)
			return nil, nil
		case protocol.NEGOTIATION_ID_OPTION_LIST:
			if err := s.list(conn, h.ID, data); err != nil {
				return nil, err
			}
		case protocol.NEGOTIATION_ID_OPTION_INFO, protocol.NEGOTIATION_ID_OPTION_GO:
			e, err := s.info(conn, h.ID, data)
			if err != nil {
				return nil, err
			}
			if e != nil && h.ID == protocol.NEGOTIATION_ID_OPTION_GO {
				return e, nil
			}
		default:
			// Structured replies, meta contexts: not offered.
			// Simple replies suffice for reads of a read-only device.
			if err := reply(conn, h.ID, protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED, nil); err != nil {
				return nil, err
			}
		}
	}
}

// tlsHandshakeTimeout bounds a client's TLS handshake: a peer that
// connects and stalls holds nothing for long.
const tlsHandshakeTimeout = 10 * time.Second

// startTLS runs the server side of the handshake on conn; a client without
// the certificate the configuration requires fails here.
func (s *Server) startTLS(conn net.Conn) (*tls.Conn, error) {
	tc := tls.Server(conn, s.opts.tls)
	conn.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}

func (s *Server) list(conn net.Conn, opt uint32, data []byte) error {
	if len(data) != 0 {
		return reply(conn, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	for _, e := range s.exports {
		b := make([]byte, 4, 4+len(e.Name))
		binary.BigEndian.PutUint32(b, uint32(len(e.Name)))
		if err := reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_SERVER, append(b, e.Name...)); err != nil {
			return err
		}
	}
	return reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil)
}

// info answers NBD_OPT_INFO and NBD_OPT_GO. It returns the export when the
// client may proceed, nil after an error reply the client can recover from.
func (s *Server) info(conn net.Conn, opt uint32, data []byte) (*Export, error) {
	if len(data) < 6 {
		return nil, reply(conn, opt, repErrInvalid, []byte("short NBD_OPT_INFO/GO payload"))
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+6 > uint64(len(data)) {
		return nil, reply(conn, opt, repErrInvalid, []byte("export name overruns the option"))
	}
	name := string(data[4 : 4+n])
	rest := data[4+n:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return nil, reply(conn, opt, repErrInvalid, []byte("info request count does not match the option length"))
	}
	e := s.lookup(name)
	if e == nil {
		return nil, reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN, []byte("no export named "+name))
	}
	var b bytes.Buffer
	_ = writeBE(&b, protocol.NEGOTIATION_TYPE_INFO_EXPORT, uint64(e.Backend.Size()), transmissionFlags)
	if err := reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_INFO, b.Bytes()); err != nil {
		return nil, err
	}
	// Block sizes go out unasked (the protocol allows it): any byte range
	// is served, 4 KiB is the page the kernel reads, 32 MiB the largest
	// request we accept.
	b.Reset()
	_ = writeBE(&b, protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE, uint32(1), uint32(4096), uint32(maxRequest))
	if err := reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_INFO, b.Bytes()); err != nil {
		return nil, err
	}
	for i := 0; i < nreq; i++ {
		var body []byte
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case protocol.NEGOTIATION_TYPE_INFO_NAME:
			body = append(binary.BigEndian.AppendUint16(nil, protocol.NEGOTIATION_TYPE_INFO_NAME), e.Name...)
		case protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION:
			if e.Description == "" {
				continue
			}
			body = append(binary.BigEndian.AppendUint16(nil, protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION), e.Description...)
		default:
			continue
		}
		if err := reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_INFO, body); err != nil {
			return nil, err
		}
	}
	return e, reply(conn, opt, protocol.NEGOTIATION_TYPE_REPLY_ACK, nil)
}

func reply(w io.Writer, opt, typ uint32, data []byte) error {
	var b bytes.Buffer
	_ = writeBE(&b, protocol.NegotiationReplyHeader{
		ReplyMagic: protocol.NEGOTIATION_MAGIC_REPLY, ID: opt, Type: typ, Length: uint32(len(data)),
	})
	b.Write(data)
	_, err := w.Write(b.Bytes())
	return err
}
