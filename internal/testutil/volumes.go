package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// blkioWriteBPS is the root blkio cgroup's (v1) write throttle. A rule
// there binds every write to the device, buffered writeback included,
// because the flusher threads run in the root cgroup.
const blkioWriteBPS = "/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"

// ThrottledVolumes makes n ext4 volumes of size bytes each whose writes
// are throttled to bps bytes per second, like EBS gp3 volumes at their
// write ceiling, and returns their mount points. Each is a loop device
// over a file on a tmpfs, so the throttle and not the host disk is the
// limit. Everything is undone at cleanup. Needs root, losetup, mkfs.ext4
// and the blkio controller of cgroup v1.
func ThrottledVolumes(t testing.TB, n int, size, bps int64) *Volumes {
	t.Helper()
	Require(t, true, "losetup", "mkfs.ext4")
	if _, err := os.Stat(blkioWriteBPS); err != nil {
		if InCI() {
			t.Fatalf("no cgroup v1 blkio write throttle: %v", err)
		}
		t.Skipf("no cgroup v1 blkio write throttle: %v", err)
	}
	backing := t.TempDir()
	Run(t, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", int64(n)*size+(64<<20)), "lazyblk-volumes", backing)
	t.Cleanup(func() { Run(t, "umount", backing) })
	v := &Volumes{}
	for i := range n {
		img := filepath.Join(backing, fmt.Sprintf("volume%d", i))
		f, err := os.Create(img)
		if err == nil {
			err = f.Truncate(size)
			f.Close()
		}
		if err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(Run(t, "losetup", "--find", "--show", img))
		t.Cleanup(func() { Run(t, "losetup", "-d", dev) })
		// lazy init off: ext4 would otherwise zero its tables in the
		// background, spending the volume's write budget during the run.
		Run(t, "mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
		v.devs = append(v.devs, strings.TrimSpace(Run(t, "lsblk", "-dno", "MAJ:MIN", dev)))
		mnt := t.TempDir()
		Run(t, "mount", dev, mnt)
		t.Cleanup(func() { Run(t, "umount", mnt) })
		v.Dirs = append(v.Dirs, mnt)
	}
	v.Throttle(t, bps)
	t.Cleanup(func() { v.Throttle(t, 0) }) // first: the unmounts flush at full speed
	return v
}

// Volumes are ThrottledVolumes.
type Volumes struct {
	Dirs []string // mount points
	devs []string // MAJ:MIN of each loop device
}

// Throttle sets every volume's write limit to bps bytes per second; 0
// lifts it.
func (v *Volumes) Throttle(t testing.TB, bps int64) {
	t.Helper()
	for _, dev := range v.devs {
		if err := os.WriteFile(blkioWriteBPS, fmt.Appendf(nil, "%s %d\n", dev, bps), 0); err != nil {
			t.Fatalf("throttle %s to %d B/s: %v", dev, bps, err)
		}
	}
}

// Sync flushes every filesystem, so a measurement that follows starts
// with no dirty pages of an earlier one still being written back.
func Sync(t testing.TB) {
	t.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
}
