// Package e2e runs the lazyblk binary against real components: registries
// on loopback, real filesystems, the kernel.
package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

var lazyblk string // the binary under test, built by TestMain

// TestMain builds lazyblk once for every test. It is static (no cgo): the
// QEMU guests have no libc, and one build serves host and guest. It has
// the race detector only when this test binary has it: `make test` runs
// the e2e package without -race (the race runtime's shadow memory turned
// a 256 MiB conversion into minutes on some machines) and a small subset
// with it (make test-e2e-race), which then drives race-built binaries.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lazyblk-e2e-*")
	if err != nil {
		panic(err)
	}
	lazyblk = filepath.Join(dir, "lazyblk")
	args := []string{"build", "-o", lazyblk}
	if testutil.Race {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/lazyblk")...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if testutil.Race {
		build.Env = os.Environ() // the race runtime needs cgo
	}
	if out, err := build.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	// The race runtime sleeps 1 s at every exit by default; mount cycles
	// start and stop hundreds of lazyblk processes.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs lazyblk and returns stdout, stderr and the exit code.
func run(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(lazyblk, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	defer logSlow(t, time.Now(), "lazyblk", args)
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// slowCommand is when a command's time is worth a line in the test's log:
// on a slow machine, -v then shows where a test's minutes went.
const slowCommand = 2 * time.Second

func logSlow(t testing.TB, start time.Time, name string, args []string) {
	t.Helper()
	if d := time.Since(start); d > slowCommand {
		t.Logf("%s %s took %v", name, strings.Join(args, " "), d.Round(10*time.Millisecond))
	}
}

func push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

type inspected struct {
	Digest, FS, IndexDigest, DataDigest, RunnableManifest string
	ImageSize, DataSize                                   uint64
	Chunks, Holes, Raw, Zstd                              int
}

// TestConvertRegistries converts an image covering every flattening case
// from and to each real registry, then rebuilds the block image from what
// the registry serves and compares its tree with a local conversion.
func TestConvertRegistries(t *testing.T) {
	registries := []struct {
		name  string
		start func(testing.TB) string
	}{
		{"ggcr", testutil.GGCRRegistry},
		{"docker-registry", testutil.DockerRegistry},
	}
	img := testutil.Image(t, false, testutil.CaseLayers(t, false, true)...)
	for _, r := range registries {
		t.Run(r.name, func(t *testing.T) {
			host := r.start(t)
			src, dst := host+"/cases/src:v1", host+"/cases/dst:v1"
			push(t, src, img)
			tmp := t.TempDir()
			if _, stderr, code := run(t, "convert", "--plain-http", "--tmp-dir", tmp, src, dst); code != 0 {
				t.Fatalf("convert exit %d: %s", code, stderr)
			}
			assertEmpty(t, tmp)
			out, stderr, code := run(t, "inspect", "--plain-http", "--json", dst)
			if code != 0 {
				t.Fatalf("inspect exit %d: %s", code, stderr)
			}
			var got inspected
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("inspect --json: %v\n%s", err, out)
			}
			if got.FS != "erofs" || got.Chunks == 0 || got.Chunks != got.Holes+got.Raw+got.Zstd {
				t.Errorf("inspect: implausible %+v", got)
			}
			tree := treeFromRegistry(t, dst, got)
			for _, p := range []string{"usr/bin/a", "opq/new", "d2f/again", "dev/null"} {
				if _, ok := tree[p]; !ok {
					t.Errorf("block image from registry lacks %s", p)
				}
			}
			checkFallbackPullable(t, dst, got.RunnableManifest)
		})
	}
}

// treeFromRegistry rebuilds the filesystem image from the registry's index
// and data blobs and reads it with the pure-Go erofs reader.
func treeFromRegistry(t *testing.T, ref string, info inspected) testutil.Tree {
	t.Helper()
	repo, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	blob := func(dgst string) []byte {
		l, err := remote.Layer(repo.Context().Digest(dgst))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("blob %s: %v", dgst, err)
		}
		return b
	}
	idx, err := imagefmt.DecodeIndex(blob(info.IndexDigest))
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := idx.WriteImage(func(i int) (io.ReaderAt, error) {
		return bytes.NewReader(blob(idx.Blobs[i].Digest.String())), nil
	}, f); err != nil {
		t.Fatal(err)
	}
	return testutil.SnapshotErofs(t, f)
}

// checkFallbackPullable pulls the runnable manifest the way a stock runtime
// does (linux/amd64 from the index) and reads its one layer to the end,
// which verifies its digest.
func checkFallbackPullable(t *testing.T, ref, runnable string) {
	t.Helper()
	r, _ := name.ParseReference(ref, name.Insecure)
	img, err := remote.Image(r, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatalf("pull fallback: %v", err)
	}
	if d, _ := img.Digest(); d.String() != runnable {
		t.Errorf("platform resolution picked %s, want runnable manifest %s", d, runnable)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("fallback layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if n, err := io.Copy(io.Discard, rc); err != nil || n == 0 {
		t.Fatalf("read fallback layer: %d bytes, %v", n, err)
	}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) > 0 {
		t.Errorf("temporary files left in %s: %s", dir, strings.Join(names, ", "))
	}
}
