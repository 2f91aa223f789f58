package blockdev

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// FileBackend is a Backend that can say where a range of its bytes lies
// in files, checked and unchanging while they are held: the server then
// sends those bytes from the files to the socket without copying them
// through its own memory. fetcher.Image, over a chunk cache, is one.
type FileBackend interface {
	Backend
	// Files calls add, in order, for each piece of the n bytes at off: a
	// file, the offset in it, the length. release ends the hold once they
	// are sent. ok is false when the range is not all in such files: the
	// server then discards what add received and reads it with ReadAt.
	// With now, ok is also false, at once, where a file would first need
	// work that waits (reading and checking it); the server then asks
	// again without now from a goroutine that may wait.
	Files(off int64, n int, now bool, add func(f *os.File, foff int64, n int)) (release func(), ok bool)
}

// resident reports whether every page of segs is in the page cache
// (cachestat(2), Linux 6.5; false where it is missing), so that splicing
// them waits for no disk, except for pages whose readahead is still
// under way.
func resident(segs []segment) bool {
	for _, s := range segs {
		first := s.off &^ (pageSize - 1)
		r := unix.CachestatRange{Off: uint64(first), Len: uint64(s.off + int64(s.n) - first)}
		var st unix.Cachestat_t
		if err := unix.Cachestat(uint(s.f.Fd()), &r, &st, 0); err != nil || st.Cache < (r.Len+pageSize-1)/pageSize {
			return false
		}
	}
	return true
}

// segment is one piece of a read: n bytes of f at off.
type segment struct {
	f   *os.File
	off int64
	n   int
}

// A splicer moves a read's bytes from a file to the connection with
// splice(2): from the file into a pipe (page references, no copy; a disk
// wait happens here, outside the connection's write lock), behind the
// reply header written into the same pipe, then from the pipe to the
// socket in one go (again references, where the kernel splices pages into
// sockets, as it does for unix and TCP sockets since Linux 6.5). A read
// through ReadAt copies every byte twice in this process, into its buffer
// and out to the socket: with nbdfuse on two cores those copies were a
// third of the server's CPU (perf).
//
// Each worker of a connection owns one splicer; nil where the connection
// has no descriptor or no pipe could be made.
type splicer struct {
	raw      syscall.RawConn
	r, w     int                                // the pipe
	capacity int                                // the pipe's size: larger reads go through ReadAt
	segs     []segment                          // the read being sent, reused
	add      func(f *os.File, off int64, n int) // appends to segs; FileBackend.Files's add
}

// pipeSize is the pipe size asked for: the largest read spliced. nbdfuse
// and the kernel ask 128–512 KiB at a time; 1 MiB is the default limit
// for pipes (/proc/sys/fs/pipe-max-size).
const pipeSize = 1 << 20

const pageSize = 4096

func newSplicer(conn net.Conn) *splicer {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var p [2]int
	// Non-blocking, so a pipe that cannot take a read's pages fails the
	// splice rather than waiting for a reader that never comes.
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	sp := &splicer{raw: raw, r: p[0], w: p[1]}
	sp.add = func(f *os.File, off int64, n int) { sp.segs = append(sp.segs, segment{f, off, n}) }
	if n, err := unix.FcntlInt(uintptr(sp.w), unix.F_SETPIPE_SZ, pipeSize); err == nil {
		sp.capacity = n
	} else if n, err := unix.FcntlInt(uintptr(sp.w), unix.F_GETPIPE_SZ, 0); err == nil {
		sp.capacity = n
	}
	return sp
}

func (sp *splicer) close() {
	if sp != nil {
		unix.Close(sp.r)
		unix.Close(sp.w)
	}
}

// errBroken is a send that failed after the reply header went out: the
// stream is out of step and the connection must end.
var errBroken = errors.New("blockdev: reply cut short")

// send answers read req with the bytes of segs, in order. The reply
// header is written into the pipe and the bytes spliced after it, so the
// whole reply leaves in one splice to the socket. It returns sent false,
// with nothing written to the connection, when the bytes could not be
// read from the files or do not fit the pipe (the caller answers with
// ReadAt instead); an error with sent true is errBroken.
func (sp *splicer) send(c *session, req request, segs []segment) (sent bool, err error) {
	n := int(req.length)
	pages := 1 // the header's
	for _, s := range segs {
		pages += s.n/pageSize + 2 // an unaligned piece straddles one page more
	}
	if pages*pageSize > sp.capacity {
		return false, nil
	}
	var hdr [16]byte
	replyHeader(hdr[:], req.handle, 0)
	if m, err := unix.Write(sp.w, hdr[:]); m != len(hdr) {
		sp.drain(max(m, 0))
		return false, fmt.Errorf("reply header into the pipe: %d bytes, %v", m, err)
	}
	total, in := len(hdr)+n, len(hdr)
	for _, s := range segs {
		foff := s.off
		for left := s.n; left > 0; {
			m, err := unix.Splice(int(s.f.Fd()), &foff, sp.w, nil, left, unix.SPLICE_F_MOVE)
			if err == unix.EINTR {
				continue
			}
			if err != nil || m == 0 { // an I/O error, the file shorter than promised, or the pipe full
				sp.drain(in)
				return false, fmt.Errorf("splice from %s: %v (%d of %d bytes)", s.f.Name(), err, in-len(hdr), n)
			}
			left -= int(m)
			in += int(m)
		}
	}
	if in != total {
		sp.drain(in)
		return false, fmt.Errorf("the files hold %d bytes of a %d-byte read", in-len(hdr), n)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	out := 0
	var serr error
	werr := sp.raw.Write(func(fd uintptr) bool {
		for out < total {
			m, err := unix.Splice(sp.r, nil, int(fd), nil, total-out, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false // the socket is full: wait until it drains
			case err != nil:
				serr = err
				return true
			case m == 0:
				serr = errors.New("pipe empty")
				return true
			}
			out += int(m)
		}
		return true
	})
	if werr != nil || serr != nil {
		sp.drain(total - out)
		if out == 0 {
			return false, fmt.Errorf("splice to the connection: %v", errors.Join(werr, serr))
		}
		return true, fmt.Errorf("%w: %d of %d bytes sent: %v", errBroken, out, total, errors.Join(werr, serr))
	}
	return true, nil
}

// drain empties the pipe of the n bytes a failed send left in it (fewer
// if it holds fewer: it does not block), so the worker's next send starts
// clean.
func (sp *splicer) drain(n int) {
	buf := make([]byte, min(n, 64<<10))
	for n > 0 {
		m, err := unix.Read(sp.r, buf[:min(n, len(buf))])
		if err == unix.EINTR {
			continue
		}
		if err != nil || m <= 0 {
			return
		}
		n -= m
	}
}
