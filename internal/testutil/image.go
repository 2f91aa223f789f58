// Package testutil builds test images, registries and trees for lazyblk's
// tests. Nothing here is used by production code.
package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"slices"
	"strconv"
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
	Raw  []byte // when set, these bytes go into the tar as they are
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
		if e.Raw != nil {
			if err := tw.Flush(); err != nil {
				t.Fatal(err)
			}
			buf.Write(e.Raw)
			continue
		}
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

// SparseEntry is a regular file of size bytes that is zero except for the
// given data segments, written as a PAX GNU sparse 1.0 entry so a layer
// holding a file of many GiB stays small. archive/tar reads such entries
// but will not write them, so the entry's bytes are built here.
func SparseEntry(t testing.TB, name string, size int64, segments map[int64][]byte) Entry {
	offsets := make([]int64, 0, len(segments))
	for off := range segments {
		offsets = append(offsets, off)
	}
	slices.Sort(offsets)
	var body bytes.Buffer
	fmt.Fprintf(&body, "%d\n", len(offsets))
	for _, off := range offsets {
		fmt.Fprintf(&body, "%d\n%d\n", off, len(segments[off]))
	}
	pad(&body)
	for _, off := range offsets {
		body.Write(segments[off])
	}
	var pax bytes.Buffer
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
		{"GNU.sparse.name", name}, {"GNU.sparse.realsize", strconv.FormatInt(size, 10)}} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1
		for len(strconv.Itoa(n))+len(rec) != n {
			n++
		}
		fmt.Fprintf(&pax, "%d%s", n, rec)
	}
	var raw bytes.Buffer
	raw.Write(ustarHeader(t, "PaxHeaders.0/"+name, int64(pax.Len()), tar.TypeXHeader))
	raw.Write(pax.Bytes())
	pad(&raw)
	raw.Write(ustarHeader(t, "GNUSparseFile.0/"+name, int64(body.Len()), tar.TypeReg))
	raw.Write(body.Bytes())
	pad(&raw)
	return Entry{Raw: raw.Bytes()}
}

// ustarHeader returns one 512-byte ustar header block of the given type.
func ustarHeader(t testing.TB, name string, size int64, typ byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: T.Truncate(time.Second), Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	h := buf.Bytes()[:512]
	h[156] = typ
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad(b *bytes.Buffer) {
	for b.Len()%512 != 0 {
		b.WriteByte(0)
	}
}
