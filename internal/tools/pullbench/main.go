// Command pullbench is the reference side of the cold-start benchmark
// (scripts/bench/coldstart.sh): what a plain pull does, and the fastest a
// blob can be downloaded.
//
//	pullbench pull REF DIR   download every layer in parallel, decompress
//	                         and unpack each into DIR/<n> (overlayfs lower
//	                         directories, DIR/0 the bottom), as containerd
//	                         does; prints {"ms":..,"bytes":..}
//	pullbench get REF DIGEST download one blob with parallel range requests
//	                         (-conns, -part) and discard it; prints the same
//
// Registries are spoken to over plain HTTP (loopback benchmarks).
package main

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

type result struct {
	MS    int64 `json:"ms"`
	Bytes int64 `json:"bytes"`
}

func main() {
	conns := flag.Int("conns", 8, "get: parallel range requests")
	part := flag.Int64("part", 32<<20, "get: bytes per range request")
	flag.Parse()
	start := time.Now()
	var n int64
	var err error
	switch {
	case flag.NArg() == 3 && flag.Arg(0) == "pull":
		n, err = pull(flag.Arg(1), flag.Arg(2))
	case flag.NArg() == 3 && flag.Arg(0) == "get":
		n, err = get(flag.Arg(1), flag.Arg(2), *conns, *part)
	default:
		log.Fatal("usage: pullbench pull REF DIR | pullbench [-conns N] [-part BYTES] get REF DIGEST")
	}
	if err != nil {
		log.Fatal(err)
	}
	json.NewEncoder(os.Stdout).Encode(result{MS: time.Since(start).Milliseconds(), Bytes: n})
}

func pull(ref, dir string) (int64, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return 0, err
	}
	img, err := remote.Image(r)
	if err != nil {
		return 0, err
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	var total atomic.Int64
	var g errgroup.Group
	for i, l := range layers {
		g.Go(func() error {
			mt, err := l.MediaType()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			defer rc.Close()
			counted := &counter{r: rc, n: &total}
			var body io.Reader = counted
			switch {
			case strings.HasSuffix(string(mt), "gzip") || mt == types.DockerLayer:
				zr, err := gzip.NewReader(counted)
				if err != nil {
					return err
				}
				body = zr
			case strings.HasSuffix(string(mt), "zstd"):
				zr, err := zstd.NewReader(counted)
				if err != nil {
					return err
				}
				defer zr.Close()
				body = zr
			}
			return untar(body, filepath.Join(dir, fmt.Sprint(i)))
		})
	}
	return total.Load(), g.Wait()
}

type counter struct {
	r io.Reader
	n *atomic.Int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// untar unpacks a layer into dir, as root: owners, modes, links and
// device nodes as recorded.
func untar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil { // parents a layer does not list
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm); err == nil {
				_, err = io.Copy(f, tr)
				err = errors.Join(err, f.Close())
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), p)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			mode := uint32(h.Mode) & 0o7777
			switch h.Typeflag {
			case tar.TypeChar:
				mode |= unix.S_IFCHR
			case tar.TypeBlock:
				mode |= unix.S_IFBLK
			default:
				mode |= unix.S_IFIFO
			}
			err = unix.Mknod(p, mode, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))))
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink && h.Typeflag != tar.TypeLink {
			if err := os.Chmod(p, h.FileInfo().Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
				return err
			}
		}
	}
}

func get(ref, digest string, conns int, part int64) (int64, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return 0, err
	}
	url := fmt.Sprintf("http://%s/v2/%s/blobs/%s", r.Context().RegistryStr(), r.Context().RepositoryStr(), digest)
	resp, err := http.Head(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	size := resp.ContentLength
	if resp.StatusCode != http.StatusOK || size <= 0 {
		return 0, fmt.Errorf("HEAD %s: %s, %d bytes", url, resp.Status, size)
	}
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = conns
	var next atomic.Int64
	var g errgroup.Group
	for range conns {
		g.Go(func() error {
			buf := make([]byte, 1<<20)
			for {
				off := next.Add(part) - part
				if off >= size {
					return nil
				}
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, min(off+part, size)-1))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return err
				}
				n, err := io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
				if err != nil {
					return err
				}
				if want := min(off+part, size) - off; n != want {
					return fmt.Errorf("range at %d: %d bytes, want %d (%s)", off, n, want, resp.Status)
				}
			}
		})
	}
	return size, g.Wait()
}
