package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// InCI reports whether the tests run in CI, where nothing may be skipped:
// CI runs as root and scripts/install-deps.sh installs every tool.
func InCI() bool { return os.Getenv("CI") != "" }

// Require skips the test outside CI when it lacks root or a tool, naming
// what is missing; in CI the same lack fails the test.
func Require(t testing.TB, root bool, tools ...string) {
	t.Helper()
	var missing []string
	if root && os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" (scripts/install-deps.sh installs it)")
		}
	}
	if len(missing) == 0 {
		return
	}
	if InCI() {
		t.Fatalf("CI must run this test but lacks %v", missing)
	}
	t.Skipf("needs %v", missing)
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// WriteLayout writes img to a new OCI image layout under tag and returns
// the directory.
func WriteLayout(t testing.TB, img v1.Image, tag string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Umoci unpacks the tagged image of an OCI layout with umoci, an unpacker
// independent of lazyblk, and snapshots its rootfs.
func Umoci(t testing.TB, dir, tag string) Tree {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	Run(t, "umoci", "unpack", "--image", dir+":"+tag, bundle)
	return SnapshotDir(t, filepath.Join(bundle, "rootfs"))
}

// Mount loop-mounts a filesystem image read-only and returns the mount
// point, unmounted at cleanup.
func Mount(t testing.TB, image, fstype string) string {
	t.Helper()
	mnt := t.TempDir()
	Run(t, "mount", "-t", fstype, "-o", "loop,ro", image, mnt)
	t.Cleanup(func() { Run(t, "umount", "-d", mnt) })
	return mnt
}
