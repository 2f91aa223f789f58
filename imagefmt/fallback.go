package imagefmt

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"runtime"
	"strings"

	"github.com/klauspost/pgzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fallbackBlob is the squashed gzip layer a stock runtime unpacks.
type fallbackBlob struct {
	Digest, DiffID v1.Hash
	Size           int64
}

// writeFallback writes the tree as one gzip-compressed layer tar. Hardlink
// groups become TypeLink entries naming the first path, like docker save.
func writeFallback(ctx context.Context, t *tree, out io.Writer) (fallbackBlob, error) {
	compressed := &countingHash{h: sha256.New(), w: out}
	// Parallel gzip: one 1 MiB block per core in flight, so the fallback
	// layer, the slowest part of a default conversion, uses every core
	// with bounded memory.
	zw, err := pgzip.NewWriterLevel(compressed, pgzip.BestSpeed)
	if err == nil {
		err = zw.SetConcurrency(1<<20, 2*runtime.GOMAXPROCS(0))
	}
	if err != nil {
		return fallbackBlob{}, err
	}
	uncompressed := &countingHash{h: sha256.New(), w: zw}
	tw := tar.NewWriter(uncompressed)
	err = t.walkInodes(func(p string, n *node, first string) error {
		if err := ctx.Err(); err != nil {
			return err // the block image failed: stop early
		}
		if p == "/" {
			return nil // the root's metadata is the runtime's to choose
		}
		name := strings.TrimPrefix(p, "/")
		hdr := tarHeader(n.ino, name)
		if first != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, strings.TrimPrefix(first, "/"), 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("fallback layer: %s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			if _, err := io.Copy(tw, t.spool.reader(n.ino.dataOff, n.ino.size)); err != nil {
				return fmt.Errorf("fallback layer: %s: %w", name, err)
			}
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return fallbackBlob{}, err
	}
	return fallbackBlob{Digest: compressed.sum(), DiffID: uncompressed.sum(), Size: compressed.n}, nil
}

func tarHeader(ino *inode, name string) *tar.Header {
	hdr := &tar.Header{
		Typeflag: ino.typ, Name: name, Mode: ino.mode, Uid: ino.uid, Gid: ino.gid,
		ModTime: ino.mtime, Linkname: ino.linkname, Devmajor: ino.major, Devminor: ino.minor,
		Size: ino.size, Format: tar.FormatPAX,
	}
	if ino.typ == tar.TypeDir {
		hdr.Name += "/"
	}
	if ino.typ != tar.TypeSymlink {
		hdr.Linkname = ""
	}
	for k, v := range ino.xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	return hdr
}

// countingHash hashes and counts what passes through to w.
type countingHash struct {
	h hash.Hash
	w io.Writer
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

func (c *countingHash) sum() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", c.h.Sum(nil))}
}
