package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestMountOptions: a default mount is nosuid,nodev, so the image's
// dev/null cannot be opened; -o dev,suid,noexec (typed after the
// arguments, as people do) makes it a device, and rw is refused before
// anything is attached.
func TestMountOptions(t *testing.T) {
	e := newMountEnv(t)
	ref, _ := e.convert(t, "erofs")

	dir := t.TempDir()
	e.mount(t, ref, dir)
	if opts := mountOptions(t, dir); !opts["nosuid"] || !opts["nodev"] || !opts["ro"] {
		t.Errorf("default mount options %v: want ro,nosuid,nodev", opts)
	}
	if f, err := os.Open(filepath.Join(dir, "dev/null")); err == nil || !errors.Is(err, syscall.EACCES) {
		t.Errorf("open dev/null on a nodev mount: %v, want EACCES", err)
		if f != nil {
			f.Close()
		}
	}
	e.umount(t, dir)

	args := []string{"mount", "--state-dir", e.state, "--plain-http", ref, dir, "--attach", "nbdfuse", "-o", "dev,suid,noexec"}
	if _, stderr, code := run(t, args...); code != 0 {
		t.Fatalf("mount REF DIR -o dev,suid,noexec: exit %d: %s", code, stderr)
	}
	if opts := mountOptions(t, dir); opts["nosuid"] || opts["nodev"] || !opts["noexec"] || !opts["ro"] {
		t.Errorf("mount -o dev,suid,noexec: options %v", opts)
	}
	f, err := os.Open(filepath.Join(dir, "dev/null"))
	if err != nil {
		t.Errorf("open dev/null with -o dev: %v", err)
	} else {
		if n, err := f.Read(make([]byte, 1)); n != 0 {
			t.Errorf("read dev/null: %d bytes, %v", n, err)
		}
		f.Close()
	}
	e.umount(t, dir)

	_, stderr, code := run(t, "mount", "--state-dir", e.state, "--plain-http", "-o", "dev,rw", ref, dir)
	if code != 2 || !strings.Contains(stderr, "--options") || !strings.Contains(stderr, "read-only") {
		t.Errorf("mount -o rw: exit %d, %q; want exit 2 naming --options and read-only", code, stderr)
	}
}

// mountOptions are the per-mount options of dir in /proc/self/mountinfo.
func mountOptions(t *testing.T, dir string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == dir {
			opts := map[string]bool{}
			for _, o := range strings.Split(f[5], ",") {
				opts[o] = true
			}
			return opts
		}
	}
	t.Fatalf("%s is not mounted", dir)
	return nil
}

// TestConfigDefaultBoth: without an argument both files are printed, each
// naming where it goes; a wrong name is refused with the choices.
func TestConfigDefaultBoth(t *testing.T) {
	out, stderr, code := run(t, "config", "default")
	if code != 0 || !strings.Contains(out, "/etc/lazyblk/fetcher.toml") || !strings.Contains(out, "/etc/lazyblk/snapshotter.toml") {
		t.Errorf("config default: exit %d, %s; want both files", code, stderr)
	}
	one, _, _ := run(t, "config", "default", "fetcher")
	if !strings.Contains(out, one) {
		t.Errorf("config default does not contain config default fetcher")
	}
	if _, stderr, code := run(t, "config", "default", "fetchr"); code != 2 || !strings.Contains(stderr, "fetcher or snapshotter") {
		t.Errorf("config default fetchr: exit %d, %q", code, stderr)
	}
}

// TestPrefetchRecordHelp: the default shown is the one the command has.
func TestPrefetchRecordHelp(t *testing.T) {
	out, _, _ := run(t, "prefetch", "record", "--help")
	if !strings.Contains(out, "default: until unmounted") || strings.Contains(out, "default: 0s") {
		t.Errorf("prefetch record --help shows the wrong default for --duration:\n%s", out)
	}
}

// TestMountUblkWithoutDriver: on a kernel without ublk_drv loaded (this
// host), --attach ublk fails naming the driver, and leaves no mount and
// no state behind; the same mount with auto works (through what the host
// has). The ublk path itself runs in the QEMU guest (TestUblk*).
func TestMountUblkWithoutDriver(t *testing.T) {
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this kernel has ublk_drv loaded; the error path needs a kernel without it")
	}
	e := newMountEnv(t)
	ref, _ := e.convert(t, "erofs")
	dir := t.TempDir()
	_, stderr, code := run(t, "mount", "--state-dir", e.state, "--plain-http", "--attach", "ublk", ref, dir)
	if code == 0 || !strings.Contains(stderr, "ublk_drv") || !strings.Contains(stderr, dir) {
		t.Errorf("mount --attach ublk without the driver: exit %d, %q; want a failure naming ublk_drv and the directory", code, stderr)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), " "+dir+" ") {
		t.Errorf("a failed mount left %s mounted", dir)
	}
	if left, _ := filepath.Glob(filepath.Join(e.state, "mounts", "*")); len(left) != 0 {
		t.Errorf("a failed mount left state behind: %v", left)
	}
	e.mount(t, ref, dir)
	e.umount(t, dir)
}
