// Command genimage pushes a generated multi-layer image for demos and
// benchmarks: a small OS-like tree plus a "weights" file of random bytes
// (incompressible, like model weights) and a file of text (compressible).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	weights := flag.Int64("weights", 256<<20, "bytes of random weights")
	text := flag.Int64("text", 64<<20, "bytes of compressible text")
	dir := flag.String("dir", os.TempDir(), "where to stage layer tars")
	busybox := flag.String("busybox", "", "add this static busybox as /bin/busybox with /bin/sh and /bin/cat, so containers can run")
	baseTar := flag.String("base-tar", "", "use this tar (e.g. a debootstrap root) as the base layer instead of the generated tree")
	layoutDir := flag.String("layout", "", "write an OCI layout with uncompressed layers here (tag v1) instead of pushing to REF")
	flag.Parse()
	if (flag.NArg() != 1) == (*layoutDir == "") {
		log.Fatal("usage: genimage [-weights N] [-text N] [-dir D] (REF | -layout DIR)")
	}
	raw = *layoutDir != ""
	var base v1.Layer
	if *baseTar != "" {
		base = fileLayer(*baseTar)
	} else {
		base = generatedBase(*dir, *busybox)
	}
	data := layer(*dir, "data", func(tw *tar.Writer) {
		rng := rand.NewChaCha8([32]byte{1})
		hdr(tw, &tar.Header{Typeflag: tar.TypeReg, Name: "models/weights.bin", Mode: 0o644, Size: *weights})
		if _, err := io.CopyN(tw, rng, *weights); err != nil {
			log.Fatal(err)
		}
		hdr(tw, &tar.Header{Typeflag: tar.TypeReg, Name: "models/vocab.txt", Mode: 0o644, Size: *text})
		line := []byte("the quick brown fox jumps over the lazy dog 0123456789\n")
		for left := *text; left > 0; left -= int64(len(line)) {
			if _, err := tw.Write(line[:min(int64(len(line)), left)]); err != nil {
				log.Fatal(err)
			}
		}
	})
	img, err := mutate.AppendLayers(empty.Image, base, data)
	if err != nil {
		log.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/usr/bin/serve"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		log.Fatal(err)
	}
	if raw {
		p, err := layout.Write(*layoutDir, empty.Index)
		if err == nil {
			err = p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"}))
		}
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	ref, err := name.ParseReference(flag.Arg(0), name.Insecure)
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		log.Fatal(err)
	}
}

// generatedBase is a small OS-like tree, with busybox when given.
func generatedBase(dir, busybox string) v1.Layer {
	return layer(dir, "base", func(tw *tar.Writer) {
		for _, d := range []string{"etc/", "usr/", "usr/bin/", "usr/lib/", "models/"} {
			hdr(tw, &tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755})
		}
		file(tw, "etc/os-release", strings("NAME=lazyblk-demo\n"))
		if busybox != "" {
			b, err := os.ReadFile(busybox)
			if err != nil {
				log.Fatal(err)
			}
			hdr(tw, &tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755})
			hdr(tw, &tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(b))})
			tw.Write(b)
			for _, applet := range []string{"sh", "cat"} {
				hdr(tw, &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox"})
			}
		}
		file(tw, "usr/bin/serve", strings("#!/bin/sh\necho serving\n"))
		for i := range 200 {
			file(tw, fmt.Sprintf("usr/lib/module%03d.py", i), strings(fmt.Sprintf("# module %d\nimport os\n", i)))
		}
	})
}

// raw: layers stay uncompressed tar files (fast to make at many GiB).
var raw bool

// rawLayer is an uncompressed layer backed by a file.
type rawLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (l *rawLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *rawLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *rawLayer) Size() (int64, error)                 { return l.size, nil }
func (l *rawLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (l *rawLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *rawLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }

func strings(s string) []byte { return []byte(s) }

func hdr(tw *tar.Writer, h *tar.Header) {
	h.ModTime = time.Unix(1700000000, 0)
	if err := tw.WriteHeader(h); err != nil {
		log.Fatal(err)
	}
}

func file(tw *tar.Writer, name string, b []byte) {
	hdr(tw, &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b))})
	if _, err := io.Copy(tw, bytes.NewReader(b)); err != nil {
		log.Fatal(err)
	}
}

// layer writes a tar to a file and returns it as a gzip layer.
func layer(dir, name string, fill func(*tar.Writer)) v1.Layer {
	f, err := os.CreateTemp(dir, "genimage-"+name+"-*.tar")
	if err != nil {
		log.Fatal(err)
	}
	tw := tar.NewWriter(f)
	fill(tw)
	if err := tw.Close(); err != nil {
		log.Fatal(err)
	}
	f.Close()
	return fileLayer(f.Name())
}

// fileLayer is a tar file as a layer: raw in a layout, gzip-compressed
// on push.
func fileLayer(path string) v1.Layer {
	if raw {
		f, err := os.Open(path)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		h, n, err := v1.SHA256(f)
		if err != nil {
			log.Fatal(err)
		}
		return &rawLayer{path: path, digest: h, size: n}
	}
	l, err := tarball.LayerFromFile(path)
	if err != nil {
		log.Fatal(err)
	}
	return l
}
