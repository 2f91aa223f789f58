package testutil

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// Random returns n pseudo-random bytes, the same for the same seed. It
// fills whole blocks (ChaCha8's Read): a byte at a time took minutes for
// hundreds of MiB under the race detector.
func Random(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

// BlockImage converts a generated image (random bytes that stay raw, text
// that compresses, zero runs that become holes) with small chunks so tests
// see many of them (opts may override), pushes it to ref, and returns the filesystem image's
// exact bytes: what every read must return.
func BlockImage(t testing.TB, ref string, randomBytes int, opts ...imagefmt.Option) (fetcher.Location, []byte) {
	t.Helper()
	rnd := Random(randomBytes, 7)
	text := bytes.Repeat([]byte("lazyblk reads lazily, verified. "), 1<<15)
	zeros := make([]byte, 1<<20)
	layer := Layer(t, []Entry{
		File("random.bin", 0o644, string(rnd)), File("text.txt", 0o644, string(text)),
		File("zeros.bin", 0o644, string(zeros)), File("small", 0o644, "small"),
	}, Uncompressed, false)
	return ConvertAndPush(t, ref, Image(t, false, layer), opts...)
}

// ConvertAndPush converts img with small chunks (opts may override),
// pushes the block image to ref and returns the filesystem image's bytes.
func ConvertAndPush(t testing.TB, ref string, img v1.Image, opts ...imagefmt.Option) (fetcher.Location, []byte) {
	t.Helper()
	opts = append([]imagefmt.Option{imagefmt.WithChunkSize(imagefmt.MinChunkSize), imagefmt.WithTempDir(t.TempDir())}, opts...)
	res, err := imagefmt.Convert(context.Background(), img, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	loc, err := fetcher.ParseLocation(ref, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := fetcher.Push(context.Background(), loc, res.Image); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "image")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := res.WriteImage(f); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return loc, want
}
