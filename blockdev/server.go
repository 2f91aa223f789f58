package blockdev

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"golang.org/x/sync/semaphore"
)

// Backend is what an export serves: a read-only byte range. fetcher.Image
// satisfies it; so does anything with a context-aware ReadAt.
type Backend interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}

// Export is one named backend. The first export of a server is also the
// default one, reached with the empty name.
type Export struct {
	Name        string
	Description string
	Backend     Backend
}

// Server serves exports over NBD: fixed-newstyle negotiation for clients
// that connect (Serve, ServeConn), bare transmission for sockets handed to
// the kernel (Transmit). Requests on one connection run concurrently and
// are answered in whatever order they finish, matched by handle.
type Server struct {
	exports []*Export
	opts    options
	mem     *semaphore.Weighted
	ctx     context.Context // cancelled by Close: ends every request
	cancel  context.CancelFunc
	wg      sync.WaitGroup // every connection goroutine

	mu     sync.Mutex             // guards open and closed
	open   map[io.Closer]struct{} // listeners and connections
	closed bool

	stats  struct{ requests, bytes, spliced, atOnce, errors atomic.Int64 }
	queues [ublkMaxQueues]atomic.Int64 // requests answered by each ublk queue

	readsMu sync.Mutex             // guards reads
	reads   map[*request]time.Time // reads in flight: when each started
}

// StuckAfter is when a read in flight counts as stuck in Stats: far
// beyond any healthy read, well before the read deadline fails it.
const StuckAfter = 10 * time.Second

// Stats counts what the server answered and what it is answering.
type Stats struct {
	Requests int64 `json:"requests"` // requests of any kind answered
	Bytes    int64 `json:"bytes"`    // bytes returned by reads
	Spliced  int64 `json:"spliced"`  // of them, those sent straight from a file (FileBackend)
	AtOnce   int64 `json:"atOnce"`   // reads spliced by the connection's reader, ready in the page cache
	Errors   int64 `json:"errors"`   // reads answered with an error
	InFlight int   `json:"inFlight"` // reads being answered now
	Stuck    int   `json:"stuck"`    // of them, those started over StuckAfter ago
	// Oldest is the age of the oldest read in flight.
	Oldest time.Duration `json:"oldestNanos"`
	// Queues counts the requests each hardware queue of a ublk device
	// answered (ublk only): how evenly the CPUs' reads spread.
	Queues []int64 `json:"queues,omitempty"`
}

// NewServer returns a server for exports, which must have distinct names.
func NewServer(exports []Export, opts ...Option) (*Server, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(exports) == 0 {
		return nil, errors.New("blockdev: a server needs at least one export")
	}
	s := &Server{opts: o, mem: semaphore.NewWeighted(o.memory),
		open: map[io.Closer]struct{}{}, reads: map[*request]time.Time{}}
	seen := map[string]bool{}
	for i := range exports {
		e := exports[i]
		if seen[e.Name] {
			return nil, fmt.Errorf("blockdev: two exports named %q", e.Name)
		}
		seen[e.Name] = true
		s.exports = append(s.exports, &e)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

func (s *Server) lookup(name string) *Export {
	if name == "" {
		return s.exports[0]
	}
	for _, e := range s.exports {
		if e.Name == name {
			return e
		}
	}
	return nil
}

// Serve accepts connections on l until Close, negotiating each. It
// returns nil after Close, the accept error otherwise.
func (s *Server) Serve(l net.Listener) error {
	if !s.track(l, false) {
		return net.ErrClosed
	}
	defer s.untrack(l)
	for {
		conn, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("blockdev: accept: %w", err)
		}
		go func() {
			if err := s.ServeConn(conn); err != nil {
				s.opts.log.Warn("nbd connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// ServeConn negotiates with a client and serves it until it disconnects.
// It closes conn.
func (s *Server) ServeConn(conn net.Conn) error {
	return s.serve(conn, s.negotiate)
}

// Transmit serves a socket whose other end the kernel owns: the kernel
// skips negotiation and sends requests at once. It closes conn.
func (s *Server) Transmit(conn net.Conn, name string) error {
	return s.serve(conn, func(conn net.Conn, r *bufio.Reader) (net.Conn, *bufio.Reader, *Export, error) {
		if e := s.lookup(name); e != nil {
			return conn, r, e, nil
		}
		return conn, r, nil, fmt.Errorf("blockdev: no export named %q", name)
	})
}

// serve runs start (negotiation, which may move the connection to TLS:
// it returns the connection and reader to go on with), then transmission.
func (s *Server) serve(conn net.Conn, start func(net.Conn, *bufio.Reader) (net.Conn, *bufio.Reader, *Export, error)) error {
	if !s.track(conn, true) {
		conn.Close()
		return net.ErrClosed
	}
	defer s.wg.Done()
	defer s.untrack(conn)
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 64<<10)
	conn, r, e, err := start(conn, r)
	defer conn.Close() // the TLS connection, when negotiation started one
	if err != nil || e == nil {
		return s.quiet(err)
	}
	return s.quiet(s.transmit(conn, r, e))
}

// quiet drops the errors of a connection that ended normally: the peer
// hung up, or Close tore the connection down.
func (s *Server) quiet(err error) error {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || s.ctx.Err() != nil {
		return nil
	}
	return err
}

// track registers something Close must close, and counts a connection
// goroutine Close waits for, under one lock: Close either sees it or
// refuses it, never a wg.Add racing its Wait. False once closed.
func (s *Server) track(c io.Closer, counted bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.open[c] = struct{}{}
	if counted {
		s.wg.Add(1)
	}
	return true
}

func (s *Server) untrack(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, c)
}

// Close stops accepting, fails requests still running, closes every
// connection and waits for their goroutines. Sockets held by the kernel
// see a dead connection: a new server can hand it fresh ones
// (Reattach).
func (s *Server) Close() error {
	s.cancel() // first, so Serve sees why Accept failed
	s.mu.Lock()
	s.closed = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	st := Stats{Requests: s.stats.requests.Load(), Bytes: s.stats.bytes.Load(), Spliced: s.stats.spliced.Load(), AtOnce: s.stats.atOnce.Load(), Errors: s.stats.errors.Load()}
	for q := range s.queues {
		if n := s.queues[q].Load(); n > 0 {
			st.Queues = append(st.Queues, make([]int64, q+1-len(st.Queues))...)
			st.Queues[q] = n
		}
	}
	now := time.Now()
	s.readsMu.Lock()
	defer s.readsMu.Unlock()
	st.InFlight = len(s.reads)
	for _, t := range s.reads {
		age := now.Sub(t)
		st.Oldest = max(st.Oldest, age)
		if age > StuckAfter {
			st.Stuck++
		}
	}
	return st
}

// session is one connection in the transmission phase.
type session struct {
	s     *Server
	e     *Export
	conn  net.Conn
	wmu   sync.Mutex  // guards writes to conn: one reply at a time
	files FileBackend // the backend, when it can name files (splice.go); or nil
}

// transmit reads requests until NBD_CMD_DISC or the end of the stream.
// A read whose bytes are ready in files (in the page cache, checked) is
// spliced at once by the goroutine that read it; other reads go to
// workers; everything else is answered inline. It returns once every
// reply has been written.
func (s *Server) transmit(conn net.Conn, r *bufio.Reader, e *Export) error {
	c := &session{s: s, e: e, conn: conn}
	c.files, _ = e.Backend.(FileBackend)
	// Reads that may wait (a disk, the network) are served by workers
	// that live as long as the connection, started as the requests in
	// flight grow, up to the bound: a goroutine per request spent more
	// CPU growing its stack and being scheduled than on its copy
	// (measured with perf through nbdfuse).
	work := make(chan job)
	var workers sync.WaitGroup
	started := 0
	defer func() { close(work); workers.Wait() }()
	serve := func(j job, sp *splicer) {
		c.read(j, sp)
		s.mem.Release(int64(j.req.length))
	}
	var sp *splicer // this goroutine's, for reads ready now
	if c.files != nil {
		sp = newSplicer(conn)
		defer sp.close()
	}
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
		req, err := decodeRequest(hdr)
		if err != nil {
			return err
		}
		s.stats.requests.Add(1)
		switch req.typ {
		case protocol.TRANSMISSION_TYPE_REQUEST_READ:
			if errno := c.check(req); errno != 0 {
				c.reply(req.handle, errno)
				continue
			}
			j, done := c.readNow(req, sp)
			if done {
				continue
			}
			// Admission bounds memory: a request waits here, and stops
			// the reading of further ones, until its buffer fits.
			if err := s.mem.Acquire(s.ctx, int64(req.length)); err != nil {
				j.release()
				return err
			}
			select {
			case work <- j: // an idle worker took it
				continue
			default:
			}
			if started == s.opts.inflight {
				work <- j // wait for a worker
				continue
			}
			started++
			workers.Add(1)
			go func() {
				defer workers.Done()
				var sp *splicer
				if c.files != nil {
					sp = newSplicer(conn)
					defer sp.close()
				}
				serve(j, sp)
				for j := range work {
					serve(j, sp)
				}
			}()
		case protocol.TRANSMISSION_TYPE_REQUEST_WRITE:
			// The payload follows the header; swallow it to stay in step.
			if req.length > maxRequest {
				return fmt.Errorf("%w: write of %d bytes", ErrProtocol, req.length)
			}
			if _, err := io.CopyN(io.Discard, r, int64(req.length)); err != nil {
				return err
			}
			c.reply(req.handle, protocol.TRANSMISSION_ERROR_EPERM)
		case cmdTrim, cmdWriteZeroes:
			c.reply(req.handle, protocol.TRANSMISSION_ERROR_EPERM)
		case cmdFlush:
			c.reply(req.handle, 0)
		case cmdCache:
			c.reply(req.handle, c.check(req))
		case protocol.TRANSMISSION_TYPE_REQUEST_DISC:
			return nil
		default:
			c.reply(req.handle, protocol.TRANSMISSION_ERROR_EINVAL)
		}
	}
}

// check validates a read's range: EINVAL past the end, for an empty or an
// oversized request.
func (c *session) check(req request) uint32 {
	size := uint64(c.e.Backend.Size())
	if req.length == 0 || req.length > maxRequest || req.off > size || uint64(req.length) > size-req.off {
		return protocol.TRANSMISSION_ERROR_EINVAL
	}
	return 0
}

// A job is a read handed to a worker, with the files holding its bytes
// when the reader already found them (segs, held until release).
type job struct {
	req     request
	segs    []segment
	release func()
}

// readNow sends read req from files, on sp, when its bytes are ready
// there: every chunk checked, every page in the page cache (readahead
// keeps a sequential reader's there), so nothing waits for a disk or the
// network. Sending it here saves the handing over to a worker, which
// cost more CPU than the splice (the wake-ups of threads; perf, through
// nbdfuse). Otherwise it returns the job for a worker, with the files
// found, if any, still held.
func (c *session) readNow(req request, sp *splicer) (j job, done bool) {
	j = job{req: req, release: func() {}}
	if sp == nil {
		return j, false
	}
	sp.segs = sp.segs[:0]
	release, ok := c.files.Files(int64(req.off), int(req.length), true, sp.add)
	if !ok {
		return j, false
	}
	if !resident(sp.segs) {
		j.segs, j.release = slices.Clone(sp.segs), release
		return j, false
	}
	defer c.track(&req)()
	if c.splice(req, sp, sp.segs, release) {
		c.s.stats.atOnce.Add(1)
		return j, true
	}
	return j, false // a worker tries the files again, then ReadAt
}

// track records a read of this session as in flight (Server.trackRead).
func (c *session) track(req *request) func() { return c.s.trackRead(req) }

// trackRead records a read as in flight, for Stats, until the returned func.
func (s *Server) trackRead(req *request) func() {
	s.readsMu.Lock()
	s.reads[req] = time.Now()
	s.readsMu.Unlock()
	return func() {
		s.readsMu.Lock()
		delete(s.reads, req)
		s.readsMu.Unlock()
	}
}

// splice sends read req from segs, held until release, and says whether
// it is answered: false, with nothing sent, when it must be read with
// ReadAt instead.
func (c *session) splice(req request, sp *splicer, segs []segment, release func()) (answered bool) {
	sent, err := sp.send(c, req, segs)
	release()
	switch {
	case sent && err == nil:
		c.s.stats.bytes.Add(int64(req.length))
		c.s.stats.spliced.Add(int64(req.length))
	case sent: // the reply is cut short: the client must see the connection end
		c.s.opts.log.Warn("nbd reply cut short, closing the connection", "export", c.e.Name, "err", err)
		c.conn.Close()
	case err != nil:
		c.s.opts.log.Debug("nbd read from the cache file failed, reading it again", "export", c.e.Name, "err", err)
	}
	return sent
}

// read answers the read of j, from files where it can (those j holds, or
// those the backend finds now), else with ReadAt.
func (c *session) read(j job, sp *splicer) {
	req := j.req
	start := time.Now()
	defer c.track(&req)()
	switch {
	case j.segs != nil && sp != nil:
		if c.splice(req, sp, j.segs, j.release) {
			return
		}
	case j.segs != nil:
		j.release()
	case sp != nil:
		sp.segs = sp.segs[:0]
		if release, ok := c.files.Files(int64(req.off), int(req.length), false, sp.add); ok && c.splice(req, sp, sp.segs, release) {
			return
		}
	}
	buf := getBuffer(16 + int(req.length))
	defer putBuffer(buf)
	if err := c.s.readAt(c.e, (*buf)[16:], int64(req.off), start); err != nil {
		errno := errEIO
		if c.s.ctx.Err() != nil {
			errno = errESHUTDOWN
		}
		c.reply(req.handle, errno)
		return
	}
	replyHeader(*buf, req.handle, 0)
	c.write(*buf)
}

// readAt fills p from e's backend at off under the request deadline,
// counting the bytes or the error (logged) in Stats. start is when the
// request arrived, for the log.
func (s *Server) readAt(e *Export, p []byte, off int64, start time.Time) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.requestTimeout)
	defer cancel()
	n, err := e.Backend.ReadAt(ctx, p, off)
	if n == len(p) && errors.Is(err, io.EOF) {
		err = nil
	}
	if err == nil && n != len(p) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		s.stats.errors.Add(1)
		s.opts.log.Warn("read failed", "export", e.Name, "off", off, "len", len(p),
			"took", time.Since(start).Round(time.Millisecond), "err", err)
		return err
	}
	s.stats.bytes.Add(int64(n))
	return nil
}

func (c *session) reply(handle uint64, errno uint32) {
	var b [16]byte
	replyHeader(b[:], handle, errno)
	c.write(b[:])
}

// write sends one whole reply. A failed write means the peer is gone; the
// read loop sees the same and ends the session, so the error is dropped.
func (c *session) write(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.conn.Write(b); err != nil {
		c.s.opts.log.Debug("nbd reply not sent", "err", err)
	}
}

// buffers recycles reply buffers up to 1 MiB, the sizes kernels and
// nbdfuse send; larger ones are left to the garbage collector.
var buffers sync.Pool

func getBuffer(n int) *[]byte {
	if b, ok := buffers.Get().(*[]byte); ok && cap(*b) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n)
	return &b
}

func putBuffer(b *[]byte) {
	if cap(*b) <= 1<<20+16 {
		buffers.Put(b)
	}
}
