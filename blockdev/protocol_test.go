package blockdev_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// rawClient speaks just enough NBD to send requests libnbd refuses to send
// (writes to a read-only export, reads past the end) and to watch reply
// order. Third-party clients cover the common path in server_test.go.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader
	lens map[uint64]uint32 // read handle -> length, to know which replies carry data
}

type rawReply struct {
	errno uint32
	data  []byte
}

func dialRaw(t *testing.T, uri string) *rawClient {
	t.Helper()
	sock := uri[strings.Index(uri, "socket=")+len("socket="):]
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{conn: conn, r: bufio.NewReader(conn), lens: map[uint64]uint32{}}
	var hello struct {
		Magic, Opt uint64
		Flags      uint16
	}
	must(t, binary.Read(c.r, binary.BigEndian, &hello))
	if hello.Magic != 0x4e42444d41474943 || hello.Opt != 0x49484156454f5054 || hello.Flags != 3 {
		t.Fatalf("greeting %+v", hello)
	}
	// Client flags fixed-newstyle + no-zeroes, then NBD_OPT_GO "img", no info requests.
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, uint32(3))
	for _, v := range []any{uint64(0x49484156454f5054), uint32(7), uint32(4 + 3 + 2)} {
		binary.Write(&b, binary.BigEndian, v)
	}
	binary.Write(&b, binary.BigEndian, uint32(3))
	b.WriteString("img")
	binary.Write(&b, binary.BigEndian, uint16(0))
	_, err = conn.Write(b.Bytes())
	must(t, err)
	for {
		var h struct {
			Magic           uint64
			Opt, Typ, Len32 uint32
		}
		must(t, binary.Read(c.r, binary.BigEndian, &h))
		_, err := io.CopyN(io.Discard, c.r, int64(h.Len32))
		must(t, err)
		if h.Typ == 1 { // NBD_REP_ACK
			return c
		}
		if h.Typ != 3 { // NBD_REP_INFO
			t.Fatalf("NBD_OPT_GO reply type %#x", h.Typ)
		}
	}
}

func (c *rawClient) send(t *testing.T, typ uint16, handle, off uint64, length uint32, payload []byte) {
	t.Helper()
	var b bytes.Buffer
	for _, v := range []any{uint32(0x25609513), uint16(0), typ, handle, off, length} {
		binary.Write(&b, binary.BigEndian, v)
	}
	b.Write(payload)
	if typ == 0 {
		c.lens[handle] = length
	}
	_, err := c.conn.Write(b.Bytes())
	must(t, err)
}

func (c *rawClient) recv(t *testing.T) (uint64, rawReply) {
	t.Helper()
	var h struct {
		Magic, Errno uint32
		Handle       uint64
	}
	must(t, binary.Read(c.r, binary.BigEndian, &h))
	if h.Magic != 0x67446698 {
		t.Fatalf("reply magic %#x", h.Magic)
	}
	rep := rawReply{errno: h.Errno}
	if n, ok := c.lens[h.Handle]; ok && h.Errno == 0 {
		rep.data = make([]byte, n)
		_, err := io.ReadFull(c.r, rep.data)
		must(t, err)
	}
	return h.Handle, rep
}

// TestOutOfOrderReplies holds the registry's answer for one chunk while
// later requests on the same connection complete: their replies overtake
// it, matched by handle. Writes, trims and unknown commands are refused
// without losing the connection's framing; NBD_CMD_DISC ends it cleanly.
func TestOutOfOrderReplies(t *testing.T) {
	release := make(chan struct{})
	var slow rangeMatch // the chunk whose answer is held, once known
	s := serve(t, func(host string) string {
		return testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
			if slow.matches(r) {
				<-release // hold this answer until the test lets it go
			}
			return testutil.Pass
		})
	})
	k, blob, off := storedChunk(s.im)
	slow.set(blob, off)
	slowOff := uint64(k) * uint64(s.im.Index().ChunkSize)
	size := uint64(len(s.want))

	c := dialRaw(t, s.uri)
	c.send(t, 0, 1, slowOff, 4096, nil)                   // held
	c.send(t, 0, 2, 0, 4096, nil)                         // served
	c.send(t, 1, 3, 0, 512, bytes.Repeat([]byte{1}, 512)) // write: EPERM
	c.send(t, 0, 4, size-512, 4096, nil)                  // past the end: EINVAL
	c.send(t, 4, 5, 0, 4096, nil)                         // trim: EPERM
	c.send(t, 99, 6, 0, 0, nil)                           // unknown: EINVAL
	c.send(t, 3, 7, 0, 0, nil)                            // flush: ok
	c.send(t, 0, 8, size-4096, 4096, nil)                 // last page: served
	want := map[uint64]uint32{2: 0, 3: uint32(syscall.EPERM), 4: uint32(syscall.EINVAL), 5: uint32(syscall.EPERM),
		6: uint32(syscall.EINVAL), 7: 0, 8: 0}
	for n := len(want); n > 0; n-- {
		h, rep := c.recv(t)
		errno, ok := want[h]
		if !ok {
			t.Fatalf("reply for handle %d before the held read was released", h)
		}
		if rep.errno != errno {
			t.Errorf("handle %d: errno %d, want %d", h, rep.errno, errno)
		}
		if h == 2 && !bytes.Equal(rep.data, s.want[:4096]) || h == 8 && !bytes.Equal(rep.data, s.want[size-4096:]) {
			t.Errorf("handle %d: wrong bytes", h)
		}
		delete(want, h)
	}
	close(release)
	h, rep := c.recv(t)
	if h != 1 || rep.errno != 0 || !bytes.Equal(rep.data, s.want[slowOff:slowOff+4096]) {
		t.Fatalf("held read: handle %d errno %d", h, rep.errno)
	}
	c.send(t, 2, 9, 0, 0, nil) // NBD_CMD_DISC: no reply, the server hangs up
	if n, err := c.r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after NBD_CMD_DISC: read %d bytes, err %v; want EOF", n, err)
	}
}

// TestTransmitKernelSocket serves a socketpair the way a kernel-attached
// device uses it: no negotiation, requests at once.
func TestTransmitKernelSocket(t *testing.T) {
	s := serve(t, nil)
	ours, kernel, err := blockdev.Socketpair()
	must(t, err)
	theirs, err := net.FileConn(kernel)
	must(t, err)
	kernel.Close()
	done := make(chan error, 1)
	go func() { done <- s.srv.Transmit(ours, "img") }()
	c := &rawClient{conn: theirs, r: bufio.NewReader(theirs), lens: map[uint64]uint32{}}
	for i := uint64(0); i < 16; i++ {
		c.send(t, 0, i, i*65536, 65536, nil)
	}
	for range 16 {
		h, rep := c.recv(t)
		if rep.errno != 0 || !bytes.Equal(rep.data, s.want[h*65536:(h+1)*65536]) {
			t.Fatalf("handle %d: errno %d or wrong bytes", h, rep.errno)
		}
	}
	theirs.Close() // the kernel dropping a dead connection
	if err := <-done; err != nil {
		t.Errorf("Transmit after the peer hung up: %v", err)
	}
	if _, err := blockdev.NewServer(nil); err == nil {
		t.Error("a server without exports was accepted")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
