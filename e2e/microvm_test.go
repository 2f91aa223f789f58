package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// microVMImage is a small root filesystem whose entrypoint prints a line
// from a file of the image, beside 128 MiB of weights the start-up never
// reads: what a lazy boot skips and a full download does not.
func microVMImage(t *testing.T, ref string) {
	t.Helper()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	layer := testutil.Layer(t, []testutil.Entry{
		testutil.Dir("bin", 0o755), testutil.File("bin/busybox", 0o755, string(busybox)),
		testutil.Symlink("bin/sh", "busybox"), testutil.Symlink("bin/cat", "busybox"),
		testutil.Dir("etc", 0o755), testutil.File("etc/motd", 0o644, "hello from a lazily booted image\n"),
		testutil.Dir("models", 0o755), testutil.File("models/weights.bin", 0o644, string(testutil.Random(128<<20, 9))),
	}, testutil.Uncompressed, false)
	img := testutil.Image(t, false, layer)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Entrypoint = []string{"/bin/sh", "-c"}
	cfg.Config.Cmd = []string{`echo "ENTRYPOINT-OUTPUT $(cat /etc/motd) as $0"`, "function"}
	cfg.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	testutil.ConvertAndPush(t, ref, img, imagefmt.WithChunkSize(imagefmt.DefaultChunkSize))
}

// initShim is the guest's init for a container image on /dev/vda: erofs
// read-only below, a tmpfs above for writes (overlayfs), then the image's
// entrypoint and arguments, read from the image's OCI config on the host.
func initShim(t *testing.T, ref string) string {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	quote := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	var argv []string
	for _, a := range append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...) {
		argv = append(argv, quote(a))
	}
	var env []string
	for _, e := range cfg.Config.Env {
		env = append(env, quote(e))
	}
	return fmt.Sprintf(`mkdir -p /lower /rw /newroot
mount -t erofs -o ro /dev/vda /lower
mount -t tmpfs rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot
echo written > /newroot/etc/scratch && echo OVERLAY-WRITABLE
env -i %s chroot /newroot %s
`, strings.Join(env, " "), strings.Join(argv, " "))
}

// TestMicroVMBoot boots a QEMU guest (Debian's cloud kernel) whose root
// disk is an image served lazily by lazyblk serve, through QEMU's own NBD
// client on a unix socket; the guest's init mounts the erofs root
// read-only under a tmpfs overlay and runs the image's entrypoint, whose
// output the test asserts. In the same run, the same VM boots from a
// fully downloaded copy (lazyblk cat), and from the block device of a
// lazyblk mount handed to QEMU as a raw drive: the time from serve,
// mount or download start to the entrypoint's first output line is
// logged for each.
func TestMicroVMBoot(t *testing.T) {
	testutil.RequireVM(t)
	host := testutil.GGCRRegistry(t)
	ref := host + "/vm/app:v1"
	microVMImage(t, ref)
	shim := initShim(t, ref)
	modules := []string{"virtio_blk", "libcrc32c", "erofs", "overlay"}

	boot := func(g testutil.Guest) (string, time.Time) {
		var mu sync.Mutex
		var first time.Time
		g.Modules, g.Script = modules, shim
		g.OnLine = func(line string) {
			mu.Lock()
			defer mu.Unlock()
			if first.IsZero() && strings.Contains(line, "ENTRYPOINT-OUTPUT") {
				first = time.Now()
			}
		}
		out := g.Boot(t, 5*time.Minute)
		mu.Lock()
		defer mu.Unlock()
		return out, first
	}
	check := func(what, out string) {
		if !strings.Contains(out, "ENTRYPOINT-OUTPUT hello from a lazily booted image as function") ||
			!strings.Contains(out, "OVERLAY-WRITABLE") || !strings.Contains(out, "GUEST-EXIT 0") {
			t.Errorf("%s: the entrypoint did not run as the image says; console:\n%s", what, out)
		}
	}

	start := time.Now()
	sock := filepath.Join(t.TempDir(), "export.sock")
	serve, _ := startServe(t, lazyblk, "--plain-http", "--listen", "unix:"+sock, ref)
	out, first := boot(testutil.Guest{Drives: []string{"file=nbd+unix:///?socket=" + sock + ",format=raw,if=virtio,readonly=on"}})
	lazy := first.Sub(start)
	check("lazy boot", out)
	serve.Process.Signal(os.Interrupt)
	serve.Wait()

	// The second path: the block device of a lazyblk attach handed to the
	// VMM as a raw drive. This host has neither ublk nor kernel NBD, so
	// the attach is nbdfuse's file; /dev/ublkbN or /dev/nbdN take its
	// place where the kernel has them.
	state, mnt := t.TempDir(), t.TempDir()
	start = time.Now()
	mout, stderr, code := run(t, "mount", "--state-dir", state, "--plain-http", "--attach", "nbdfuse", "--json", ref, mnt)
	if code != 0 {
		t.Fatalf("mount: exit %d: %s", code, stderr)
	}
	var rep struct{ Device string }
	if err := json.Unmarshal([]byte(mout), &rep); err != nil || rep.Device == "" {
		t.Fatalf("mount --json %q: no device (%v)", mout, err)
	}
	out, first = boot(testutil.Guest{Drives: []string{"file=" + rep.Device + ",format=raw,if=virtio,readonly=on"}})
	attached := first.Sub(start)
	check("boot from an attached device", out)
	if _, stderr, code := run(t, "umount", "--state-dir", state, mnt); code != 0 {
		t.Errorf("umount: exit %d: %s", code, stderr)
	}

	start = time.Now()
	file := filepath.Join(t.TempDir(), "root.erofs")
	cat := exec.Command(lazyblk, "cat", "--plain-http", ref)
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	var catErr strings.Builder
	cat.Stdout, cat.Stderr = f, &catErr
	if err := cat.Run(); err != nil {
		t.Fatalf("lazyblk cat: %v\n%s", err, catErr.String())
	}
	f.Close()
	out, first = boot(testutil.Guest{Disks: []string{file}})
	full := first.Sub(start)
	check("boot from a full copy", out)
	if !t.Failed() {
		t.Logf("microvm: to the entrypoint's first line from serve start %.2f s (lazy, QEMU's NBD client), from mount start %.2f s "+
			"(lazy, the attached device as a raw drive), from download start %.2f s (full copy): lazy/full %.2f",
			lazy.Seconds(), attached.Seconds(), full.Seconds(), lazy.Seconds()/full.Seconds())
	}
}
