package e2e

// The soak's parts: its images, mounts, readers and events (soak_test.go
// runs them).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/internal/testutil"
	"github.com/lazyblk/lazyblk/mounts"
)

// soakFiles is an image's content: random and compressible files of a
// few MiB and a directory of small ones.
func soakFiles(seed uint64) map[string][]byte {
	files := map[string][]byte{
		"big.bin":  testutil.Random(24<<20, byte(seed)),
		"text.txt": bytes.Repeat([]byte(fmt.Sprintf("line of text %d, compressible\n", seed)), 200000),
	}
	for i := range 64 {
		files[fmt.Sprintf("small/%02d", i)] = testutil.Random(4<<10+i*1000, byte(seed*64+uint64(i)))
	}
	return files
}

// soakImage pushes files as an image and converts it; the mount reads it
// through the fault proxy.
func soakImage(t *testing.T, registry, proxy, name string, files map[string][]byte) string {
	t.Helper()
	entries := []testutil.Entry{testutil.Dir("small", 0o755)}
	for n, b := range files {
		entries = append(entries, testutil.File(n, 0o644, string(b)))
	}
	src, dst := registry+"/soak/"+name+":src", registry+"/soak/"+name+":v1"
	push(t, src, testutil.Image(t, false, testutil.Layer(t, entries, testutil.Uncompressed, false)))
	if _, stderr, code := run(t, "convert", "--plain-http", src, dst); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	return proxy + "/soak/" + name + ":v1"
}

func soakMountIt(t *testing.T, m *soakMount) {
	t.Helper()
	args := append(append([]string{"mount", "--plain-http", "--attach", "nbdfuse"}, m.args...), m.ref, m.dir)
	if _, stderr, code := run(t, args...); code != 0 {
		t.Fatalf("%s: mount: exit %d: %s", m.name, code, stderr)
	}
}

// soakReader reads random ranges of m's files until stop, checking each
// against the reference.
func soakReader(s *soak, m *soakMount, seed uint64, stop chan struct{}) {
	r := rand.New(rand.NewPCG(seed, 3))
	buf := make([]byte, 512<<10)
	for {
		select {
		case <-stop:
			return
		default:
		}
		name := m.names[r.IntN(len(m.names))]
		want := m.files[name]
		off := r.IntN(len(want))
		n := min(len(want)-off, 1+r.IntN(len(buf)))
		m.mu.RLock()
		start := time.Now()
		got, err := preadFile(filepath.Join(m.dir, name), buf[:n], int64(off))
		took := time.Since(start)
		m.mu.RUnlock()
		switch {
		case took > soakHang:
			s.hangs.Add(1)
		case err != nil:
			s.failed.Add(1)
			switch {
			case errors.Is(err, syscall.EIO):
			case m.killed.Load() && (errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EINVAL)):
				// nbdfuse's answers once the server is dead: its NBD
				// connection is gone, or its FUSE connection aborted;
				// an open that needs metadata erofs has not cached gets
				// EINVAL then (seen twice in make test, always in that
				// window)
				s.failedKilled.Add(1)
			default:
				s.notEIO.Add(1)
				state := ""
				if m.killed.Load() {
					state = " (server killed)"
				}
				s.count(&s.otherErrs, fmt.Sprintf("%s%s: %v", m.name, state, err))
			}
			sleepOrStop(10*time.Millisecond, stop) // no spinning on a dead mount
		case !bytes.Equal(got, want[off:off+n]):
			s.wrong.Add(1)
			s.countWrong(m, name, off, got, want[off:off+len(got)])
		default:
			s.verified.Add(1)
			s.verifiedBytes.Add(int64(n))
		}
	}
}

// countWrong records a read that returned wrong bytes: which mount and
// file, whether its server was killed, the event last started, and where
// in the file the first wrong byte was (to the 4 KiB page).
func (s *soak) countWrong(m *soakMount, name string, off int, got, want []byte) {
	i := 0
	for i < len(got) && got[i] == want[i] {
		i++
	}
	state := ""
	if m.killed.Load() {
		state = " (server killed)"
	}
	ev, _ := s.lastEvent.Load().(string)
	s.count(&s.wrongs, fmt.Sprintf("%s%s %s page %d, during %q", m.name, state, name, (off+i)/4096, ev))
}

func preadFile(path string, p []byte, off int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		err = nil
	}
	return p[:n], err
}

// soakKill SIGKILLs m's serving process while readers read; they get EIO
// until the soak takes the mount down and makes it again (nbdfuse has no
// reattach: the kernel NBD device has, see TestKernelNBD).
func soakKill(t *testing.T, s *soak, m *soakMount) {
	mgr := &mounts.Manager{Root: m.state}
	st, err := mgr.Get(m.dir)
	if err != nil || st.PID == 0 {
		t.Errorf("%s: no serving process to kill: %v", m.name, err)
		return
	}
	soakCollect(t, s, m)
	m.killed.Store(true)
	defer m.killed.Store(false)
	syscall.Kill(st.PID, syscall.SIGKILL)
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	time.Sleep(time.Second) // readers meet the dead server: the point of the event
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, stderr, code := run(t, "umount", "--state-dir", m.state, m.dir); code != 0 {
		t.Errorf("%s: umount after SIGKILL: exit %d: %s", m.name, code, stderr)
		return
	}
	soakMountIt(t, m)
}

// soakCollect adds a serving process's counters and peak RSS to s.
func soakCollect(t *testing.T, s *soak, m *soakMount) {
	mgr := &mounts.Manager{Root: m.state}
	st, err := mgr.Get(m.dir)
	if err != nil {
		t.Errorf("%s: %v", m.name, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stats, err := mgr.Stats(ctx, st)
	if err != nil {
		t.Errorf("%s: stats: %v", m.name, err)
		return
	}
	s.requests.Add(stats.Image.Requests)
	s.retries.Add(stats.Image.Retries)
	s.verifyFailures.Add(stats.Image.VerifyFailures)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if kb<<10 > s.peakRSS.Load() {
					s.peakRSS.Store(kb << 10)
				}
			}
		}
	}
}

// soakChunkFile flips a byte of, or deletes, a random chunk file of the
// cache under dir.
func soakChunkFile(dir string, roll func(int) int, corrupt bool) {
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		return
	}
	p := files[roll(len(files))]
	if !corrupt {
		os.Remove(p)
		return
	}
	corruptAtRest(p, roll)
}

// corruptAtRest flips one byte of the file at p on its disk, as a failing
// disk would: an O_DIRECT write of the 4 KiB block around it, which drops
// the block's page from the page cache instead of changing it in place
// (and changes the file's ctime, so the cache checks it again). A write
// through the page cache would also change bytes a block server is
// sending at that moment: it splices the cache's pages to its socket
// without copying them, so a read already checked and on its way carries
// whatever lands in them (README, "What a chunk check covers").
func corruptAtRest(p string, roll func(int) int) {
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() < 4096 {
		return
	}
	block := int64(roll(int(fi.Size()/4096))) * 4096
	buf, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE) // aligned for O_DIRECT
	if err != nil {
		return
	}
	defer syscall.Munmap(buf)
	if n, err := f.ReadAt(buf, block); n != len(buf) || err != nil {
		return
	}
	buf[roll(len(buf))] ^= 0xff
	f.WriteAt(buf, block)
}

func soakDaemonUnmount(t *testing.T, sock, dir string) {
	c, cc, err := fetcherd.Dial(sock)
	if err != nil {
		t.Error(err)
		return
	}
	defer cc.Close()
	if _, err := c.Unmount(context.Background(), &fetcherv1.UnmountRequest{Dir: dir}); err != nil {
		t.Errorf("unmount %s through the daemon: %v", dir, err)
	}
}

// sleepOrStop waits d, or less when stop closes.
func sleepOrStop(d time.Duration, stop chan struct{}) {
	select {
	case <-time.After(d):
	case <-stop:
	}
}
