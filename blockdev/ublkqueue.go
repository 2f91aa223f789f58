package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// wakeData marks the completion of the queue's eventfd read: answers are
// waiting to be committed; trimData, the queue's idle timer. Tags are
// below 1<<16.
const (
	wakeData = 1 << 32
	trimData = 1 << 33
)

// ublkTrimAfter is how long a queue must go without a request before it
// gives its buffers' memory back (madvise DONTNEED): up to depth × 256 KiB
// of pages a burst of reads touched, which an idle sandbox should not
// hold.
const ublkTrimAfter = 10 * time.Second

// ublkQueue serves one hardware queue of a ublk device. Its loop owns the
// ring and runs on one locked thread: it fetches a request per tag, hands
// reads to goroutines, and commits their answers (which fetches the tag's
// next request in the same command). Answers come back through done and
// an eventfd whose read completes on the ring.
type ublkQueue struct {
	u     *ublkServer
	id    uint16
	depth int
	maxIO int

	descs   []byte // the driver's request descriptors, one per tag (read-only map)
	bufs    []byte // depth buffers of maxIO bytes, then a page: the idle timer's timespec, the eventfd's count at its end
	mapping []byte // bufs with a guard page either side
	efd     int

	mu       sync.Mutex // guards done and stopping
	done     []ublkAnswer
	stopping bool
}

type ublkAnswer struct {
	tag    uint16
	result int32
}

func (q *ublkQueue) buf(tag uint16) []byte {
	return q.bufs[int(tag)*q.maxIO : int(tag+1)*q.maxIO]
}

func (q *ublkQueue) addr(tag uint16) uint64 {
	return uint64(uintptr(unsafe.Pointer(&q.bufs[int(tag)*q.maxIO])))
}

// stop makes the loop return once no read is being answered.
func (q *ublkQueue) stop() {
	q.mu.Lock()
	q.stopping = true
	q.mu.Unlock()
	q.wake()
}

func (q *ublkQueue) wake() {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	unix.Write(q.efd, one[:])
}

// run sets the queue up, fetches on every tag, reports on ready, then
// serves until stopped or until the driver aborts every tag.
func (q *ublkQueue) run(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with the queue
	ring, err := q.setup()
	if err != nil {
		q.release(nil)
		ready <- err
		return
	}
	defer q.release(ring)
	fd := int(q.u.char.Fd())
	for tag := range uint16(q.depth) {
		if err = ring.uringCmd(fd, ublkIoctl(ublkIOFetchReq, 16, true), uint64(tag), ublkCommand(q.id, tag, -1, q.addr(tag))); err != nil {
			break
		}
	}
	if err == nil {
		err = q.armWake(ring)
	}
	if err == nil {
		err = q.armTrim(ring)
	}
	if err == nil {
		err = ring.submit(0)
	}
	ready <- err
	if err != nil {
		return
	}
	if err := q.serve(ring, fd); err != nil {
		q.u.srv.opts.log.Error("ublk queue stopped", "dev", q.u.dev.Path(), "queue", q.id, "err", err)
	}
}

func (q *ublkQueue) setup() (*uring, error) {
	var err error
	if q.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("blockdev: ublk: eventfd: %w", err)
	}
	page := os.Getpagesize()
	descLen := (q.depth*ublkDescSize + page - 1) / page * page
	maxLen := (ublkMaxDepth*ublkDescSize + page - 1) / page * page
	if q.descs, err = unix.Mmap(int(q.u.char.Fd()), int64(q.id)*int64(maxLen), descLen, unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("blockdev: ublk: map the descriptors of queue %d: %w", q.id, err)
	}
	// The buffers sit between two inaccessible guard pages, so the
	// kernel never merges their mapping with the runtime's neighbouring
	// ones: /proc/PID/smaps shows it alone, depth×maxIO plus a page.
	if q.mapping, err = unix.Mmap(-1, 0, q.depth*q.maxIO+3*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return nil, fmt.Errorf("blockdev: ublk: buffers: %w", err)
	}
	n := len(q.mapping)
	if err := errors.Join(unix.Mprotect(q.mapping[:page], unix.PROT_NONE), unix.Mprotect(q.mapping[n-page:], unix.PROT_NONE)); err != nil {
		return nil, fmt.Errorf("blockdev: ublk: guard pages: %w", err)
	}
	q.bufs = q.mapping[page : n-page]
	// A fetch per tag, a commit per tag (never both), the eventfd read.
	return newURing(uint32(2 * q.depth))
}

func (q *ublkQueue) release(ring *uring) {
	if ring != nil {
		ring.close() // cancels the commands still fetching
	}
	for _, b := range [][]byte{q.descs, q.mapping} {
		if b != nil {
			unix.Munmap(b)
		}
	}
	if q.efd > 0 {
		unix.Close(q.efd)
	}
}

func (q *ublkQueue) armWake(ring *uring) error {
	n := len(q.bufs)
	return ring.read(q.efd, q.bufs[n-8:], wakeData)
}

// armTrim starts the idle timer: a timeout on the ring, so the loop
// itself trims, when no read can be filling a buffer.
func (q *ublkQueue) armTrim(ring *uring) error {
	ts := q.bufs[q.depth*q.maxIO:]
	putU64(ts, uint64(ublkTrimAfter/time.Second))
	putU64(ts[8:], 0)
	return ring.timeout(ts[:16], trimData)
}

// serve is the queue's loop. busy counts reads being answered; aborted,
// tags the driver let go (the device stopped); fresh, requests since the
// idle timer last fired; dirty, whether the buffers hold pages since the
// last trim.
func (q *ublkQueue) serve(ring *uring, fd int) error {
	busy, aborted, fresh, dirty := 0, 0, 0, false
	for {
		if err := ring.submit(1); err != nil {
			return err
		}
		wake, tick := false, false
		ring.reap(func(c cqe) {
			switch {
			case c.UserData == wakeData:
				wake = true
			case c.UserData == trimData:
				tick = true
			case c.Res == 0: // UBLK_IO_RES_OK: a request for this tag
				q.dispatch(uint16(c.UserData))
				busy++
				fresh++
				dirty = true
			default: // aborted (-ENODEV), or refused while the device goes
				aborted++
			}
		})
		if tick {
			if fresh == 0 && busy == 0 && dirty { // a whole period idle
				unix.Madvise(q.bufs[:q.depth*q.maxIO], unix.MADV_DONTNEED)
				dirty = false
			}
			fresh = 0
			if err := q.armTrim(ring); err != nil {
				return err
			}
		}
		if !wake {
			continue
		}
		q.mu.Lock()
		done, stopping := q.done, q.stopping
		q.done = nil
		q.mu.Unlock()
		for _, a := range done {
			busy--
			if err := ring.uringCmd(fd, ublkIoctl(ublkIOCommitAndFetch, 16, true), uint64(a.tag), ublkCommand(q.id, a.tag, a.result, q.addr(a.tag))); err != nil {
				return err
			}
		}
		if stopping && busy == 0 || aborted >= q.depth && busy == 0 {
			return ring.submit(0) // the last answers reach the driver
		}
		if err := q.armWake(ring); err != nil {
			return err
		}
	}
}

// dispatch starts answering the request the driver put in tag's
// descriptor: a read goes to a goroutine; anything else (writes,
// flushes, discards, on a read-only device) is refused with EIO, as a
// disk without such support would.
func (q *ublkQueue) dispatch(tag uint16) {
	d := q.descs[int(tag)*ublkDescSize:]
	op := binary.LittleEndian.Uint32(d[0:]) & 0xff
	sectors := binary.LittleEndian.Uint32(d[4:])
	off := int64(binary.LittleEndian.Uint64(d[8:])) << 9
	n := int(sectors) << 9
	if op != ublkOpRead || n > q.maxIO {
		q.u.srv.opts.log.Warn("ublk request refused", "dev", q.u.dev.Path(), "op", op, "off", off, "len", n)
		q.answer(tag, -int32(unix.EIO))
		return
	}
	go q.read(tag, off, n)
}

func (q *ublkQueue) read(tag uint16, off int64, n int) {
	req := &request{handle: uint64(tag), off: uint64(off), length: uint32(n)}
	defer q.u.srv.trackRead(req)()
	result := int32(n)
	if err := q.u.srv.readAt(q.u.e, q.buf(tag)[:n], off, time.Now()); err != nil {
		result = -int32(unix.EIO)
	}
	q.answer(tag, result)
}

func (q *ublkQueue) answer(tag uint16, result int32) {
	q.u.srv.stats.requests.Add(1)
	q.u.srv.queues[q.id].Add(1)
	q.mu.Lock()
	q.done = append(q.done, ublkAnswer{tag, result})
	q.mu.Unlock()
	q.wake()
}
