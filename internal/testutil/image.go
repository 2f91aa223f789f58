// Package testutil builds test images, registries and trees for lazyblk's
// tests. Nothing here is used by production code.
package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is one tar entry of a generated layer.
type Entry struct {
	Hdr  tar.Header
	Data []byte
}

// T is a fixed timestamp so generated images are reproducible.
var T = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// Dir, File, Symlink, Link and Node build entries with common defaults.
func Dir(name string, mode int64) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: T, Format: tar.FormatPAX}}
}

func File(name string, mode int64, data string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: T, Format: tar.FormatPAX}, Data: []byte(data)}
}

func Symlink(name, target string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: T, Format: tar.FormatPAX}}
}

func Link(name, target string) Entry {
	return Entry{Hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: T, Format: tar.FormatPAX}}
}

func Node(name string, typ byte, major, minor int64) Entry {
	return Entry{Hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o644, Devmajor: major, Devminor: minor, ModTime: T, Format: tar.FormatPAX}}
}

// Tar serialises entries.
func Tar(t testing.TB, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			t.Fatalf("tar data %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Compression of a generated layer.
type Compression string

const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// Layer builds a layer blob from entries with the given compression, using
// Docker v2 media types when docker is set and OCI ones otherwise.
func Layer(t testing.TB, entries []Entry, c Compression, docker bool) v1.Layer {
	t.Helper()
	raw := Tar(t, entries)
	var buf bytes.Buffer
	var mt types.MediaType
	switch c {
	case Gzip:
		zw := gzip.NewWriter(&buf)
		write(t, zw, raw)
		mt = types.OCILayer
		if docker {
			mt = types.DockerLayer
		}
	case Zstd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		write(t, zw, raw)
		mt = types.OCILayerZStd
	case Uncompressed:
		buf.Write(raw)
		mt = types.OCIUncompressedLayer
		if docker {
			mt = types.DockerUncompressedLayer
		}
	}
	return &blobLayer{Layer: static.NewLayer(buf.Bytes(), mt), diffID: sha(raw), raw: raw}
}

func write(t testing.TB, w io.WriteCloser, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// blobLayer is a static layer that knows its uncompressed form.
type blobLayer struct {
	v1.Layer
	diffID v1.Hash
	raw    []byte
}

func (l *blobLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.raw)), nil
}

// Image stacks layers into an image for linux/amd64.
func Image(t testing.TB, docker bool, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := empty.Image
	if docker {
		img = mutate.MediaType(img, types.DockerManifestSchema2)
		img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	} else {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/bin/true"}
	cfg.Created = v1.Time{Time: T}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func sha(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b))
	return h
}

// RawLayer is a layer blob of exactly b, claiming media type mt and diff
// ID diffID: how tests build corrupt or unusual layers.
func RawLayer(b []byte, mt types.MediaType, diffID v1.Hash) v1.Layer {
	return &blobLayer{Layer: static.NewLayer(b, mt), diffID: diffID, raw: b}
}

// GzipBytes compresses b.
func GzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	write(t, gzip.NewWriter(&buf), b)
	return buf.Bytes()
}

// SHA256 is the digest of b.
func SHA256(b []byte) v1.Hash { return sha(b) }
