package blockdev

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// pipeRing is a ring of 4 entries on this host's kernel, a pipe to read
// from and a page of mapped memory to read into, all closed when the
// test ends. Without io_uring here the test skips, except in CI.
func pipeRing(t *testing.T) (u *uring, r, w *os.File, buf []byte) {
	t.Helper()
	u, err := newURing(4)
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("CI must run this test: %v", err)
		}
		t.Skipf("io_uring unavailable here: %v (kernel.io_uring_disabled?)", err)
	}
	t.Cleanup(func() { u.close() })
	if r, w, err = os.Pipe(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	if buf, err = unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(buf) })
	return u, r, w, buf
}

// TestURingRead runs the ring on this host's kernel (no ublk here: the
// ublk commands run in the QEMU guest, e2e TestUblk*): a read queued on a
// pipe completes with its bytes in mapped memory and its user data; a
// ring refuses more entries than it holds.
func TestURingRead(t *testing.T) {
	u, r, w, buf := pipeRing(t)
	if err := u.read(int(r.Fd()), buf[:16], 42); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("ring of reads")); err != nil {
		t.Fatal(err)
	}
	if err := u.submit(1); err != nil {
		t.Fatal(err)
	}
	var got []cqe
	u.reap(func(c cqe) { got = append(got, c) })
	if len(got) != 1 || got[0].UserData != 42 || got[0].Res != int32(len("ring of reads")) {
		t.Fatalf("completions %+v, want one for user data 42 with 13 bytes", got)
	}
	if !bytes.Equal(buf[:13], []byte("ring of reads")) {
		t.Errorf("read %q into the buffer", buf[:13])
	}
	ts := buf[64:80] // __kernel_timespec: 0 s, 10 ms
	putU64(ts, 0)
	putU64(ts[8:], uint64(10*time.Millisecond))
	if err := u.timeout(ts, 7); err != nil {
		t.Fatal(err)
	}
	if err := u.submit(1); err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	u.reap(func(c cqe) { got = append(got, c) })
	if len(got) != 1 || got[0].UserData != 7 || got[0].Res != -int32(unix.ETIME) {
		t.Fatalf("completions %+v, want the timeout (user data 7) with -ETIME", got)
	}
	for i := range u.entries {
		if _, err := u.next(); err != nil {
			t.Fatalf("entry %d of %d: %v", i, u.entries, err)
		}
	}
	if _, err := u.next(); !errors.Is(err, errRingFull) {
		t.Errorf("one entry more than the ring holds: %v, want errRingFull", err)
	}
}

// TestURingWaitThroughSignals: a submit that waits for a completion
// returns only once it is there, however often the waiting thread is
// signalled (Go's runtime preempts with SIGURG). io_uring_enter(2) hides
// an interrupted wait when the same call submitted entries, which once
// let START_DEV look done before the driver had added the disk (CI:
// TestUblkMount, "mount /dev/ublkb0: no such file or directory").
func TestURingWaitThroughSignals(t *testing.T) {
	u, r, w, buf := pipeRing(t)
	if err := u.read(int(r.Fd()), buf[:16], 9); err != nil {
		t.Fatal(err)
	}
	tid := make(chan int)
	returned := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		returned <- u.submit(1)
	}()
	waiter := <-tid
	// The read cannot complete before the pipe has bytes: a return now,
	// whatever it says, is a wait cut short by a signal. Absence cannot
	// be awaited: signal the thread 200 times over 200 ms.
	for range 200 {
		select {
		case err := <-returned:
			t.Fatalf("submit(1) returned (%v) with %d completions ready while the read it waits for could not complete", err, u.ready())
		case <-time.After(time.Millisecond):
			unix.Tgkill(os.Getpid(), waiter, unix.SIGURG)
		}
	}
	if _, err := w.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-returned:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("submit(1) did not return within 10 s of the read's bytes")
	}
	var got []cqe
	u.reap(func(c cqe) { got = append(got, c) })
	if len(got) != 1 || got[0].UserData != 9 || got[0].Res != 4 {
		t.Fatalf("completions %+v, want the read (user data 9) of 4 bytes", got)
	}
}

// TestUblkIoctl checks the command encoding against the values the
// kernel header's _IOR/_IOWR give (include/uapi/linux/ublk_cmd.h).
func TestUblkIoctl(t *testing.T) {
	for _, c := range []struct {
		name string
		got  uint32
		want uint32
	}{
		{"UBLK_U_CMD_ADD_DEV", ublkIoctl(ublkCmdAddDev, 32, true), 0xc0207504},
		{"UBLK_U_CMD_GET_DEV_INFO", ublkIoctl(ublkCmdGetDevInfo, 32, false), 0x80207502},
		{"UBLK_U_CMD_GET_FEATURES", ublkIoctl(ublkCmdGetFeatures, 32, false), 0x80207513},
		{"UBLK_U_IO_FETCH_REQ", ublkIoctl(ublkIOFetchReq, 16, true), 0xc0107520},
		{"UBLK_U_IO_COMMIT_AND_FETCH_REQ", ublkIoctl(ublkIOCommitAndFetch, 16, true), 0xc0107521},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if n := len(ublkCommand(1, 2, -5, 0x1000)); n != 16 {
		t.Errorf("ublksrv_io_cmd is %d bytes, want 16", n)
	}
}
