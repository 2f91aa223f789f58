package blockdev_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/blockdev"
)

// memBackend serves a byte slice: the fuzz tests need no registry.
type memBackend []byte

func (m memBackend) Size() int64 { return int64(len(m)) }
func (m memBackend) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	if off >= int64(len(m)) {
		return 0, io.EOF
	}
	return copy(p, m[off:]), nil
}

// nbdClientBytes is what a well-behaved client sends: fixed-newstyle
// flags, NBD_OPT_GO for export name, then the requests.
func nbdClientBytes(name string, reqs ...[]byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, uint32(3))
	for _, v := range []any{uint64(0x49484156454f5054), uint32(7), uint32(4 + len(name) + 2), uint32(len(name))} {
		binary.Write(&b, binary.BigEndian, v)
	}
	b.WriteString(name)
	binary.Write(&b, binary.BigEndian, uint16(0))
	for _, r := range reqs {
		b.Write(r)
	}
	return b.Bytes()
}

func nbdRequest(typ uint16, handle, off uint64, length uint32) []byte {
	var b bytes.Buffer
	for _, v := range []any{uint32(0x25609513), uint16(0), typ, handle, off, length} {
		binary.Write(&b, binary.BigEndian, v)
	}
	return b.Bytes()
}

// FuzzServeConn feeds arbitrary client bytes to the NBD server's
// negotiation and request loop over net.Pipe (ServeConn) and to the
// kernel's path (Transmit): the server never panics, and it returns once
// the client is gone — no request keeps it waiting.
func FuzzServeConn(f *testing.F) {
	read, disc := nbdRequest(0, 1, 4096, 512), nbdRequest(2, 2, 0, 0)
	f.Add(nbdClientBytes("", read, disc))
	f.Add(nbdClientBytes("img", read, nbdRequest(0, 3, 1<<20-1, 2), disc))
	f.Add(nbdClientBytes("img", nbdRequest(1, 4, 0, 8), []byte("12345678"), nbdRequest(4, 5, 0, 4096), disc)) // write, trim
	f.Add(nbdClientBytes("nosuch"))
	f.Add(nbdClientBytes("img", nbdRequest(0, 6, 1<<62, 1<<31)))
	f.Add([]byte{0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff}) // NBD_OPT_LIST, huge length
	srv, err := blockdev.NewServer([]blockdev.Export{{Name: "img", Backend: memBackend(bytes.Repeat([]byte{7}, 1<<20))}},
		blockdev.WithRequestTimeout(time.Second))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, kernel := range []bool{false, true} {
			server, client := net.Pipe()
			done := make(chan error, 1)
			go func() {
				if kernel {
					done <- srv.Transmit(server, "img")
				} else {
					done <- srv.ServeConn(server)
				}
			}()
			go io.Copy(io.Discard, client) // the server's answers
			client.SetWriteDeadline(time.Now().Add(2 * time.Second))
			client.Write(in)
			client.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("the server still serves a client that left (kernel socket: %v)", kernel)
			}
		}
	})
}
