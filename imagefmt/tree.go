package imagefmt

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// Whiteout names, as the OCI image spec defines them for layer tars.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// ErrBadLayer reports a layer tar that cannot be applied.
var ErrBadLayer = errors.New("imagefmt: bad layer")

// inode is one file of the flattened tree. Hardlinked names share an inode,
// so a link keeps the content it was made with even when a later layer
// replaces the path it was linked to — what an unpack onto one directory
// (containerd, umoci) gives.
type inode struct {
	typ      byte // tar.TypeReg, TypeDir, TypeSymlink, TypeChar, TypeBlock, TypeFifo
	mode     int64
	uid, gid int
	mtime    time.Time
	xattrs   map[string]string
	linkname string // symlink target
	major    int64
	minor    int64
	size     int64
	dataOff  int64 // offset of the content in the spool
}

// node is one name in the flattened tree.
type node struct {
	name     string
	ino      *inode
	children map[string]*node // directories only
	layer    int              // the layer that last created this name
}

// tree is the result of applying layers in order.
type tree struct {
	root  *node
	spool *spool
	// files lists, per layer, every regular file its tar wrote, in tar
	// order, visible in the end or not: the layer-stable layout gives each
	// a place in its layer's region (regions.go).
	files [][]layerFile
}

// layerFile is one regular file a layer's tar wrote.
type layerFile struct {
	path string
	ino  *inode
}

func newTree(sp *spool) *tree {
	root := &node{ino: &inode{typ: tar.TypeDir, mode: 0o755}, children: map[string]*node{}, layer: -1}
	return &tree{root: root, spool: sp}
}

// applyLayer applies one uncompressed layer tar with overlay semantics:
// whiteouts and opaque markers hide names from lower layers only.
func (t *tree) applyLayer(layer int, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: read tar: %v", ErrBadLayer, err)
		}
		if err := t.applyEntry(layer, hdr, tr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
}

func (t *tree) applyEntry(layer int, hdr *tar.Header, data io.Reader) error {
	p := path.Clean("/" + hdr.Name)
	dir, base := path.Split(p)
	if p == "/" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: root is not a directory", ErrBadLayer)
		}
		t.root.ino = t.newInode(hdr)
		return nil
	}
	parent, err := t.mkdirAll(layer, dir)
	if err != nil {
		return err
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		t.whiteout(layer, parent, base)
		return nil
	}
	old := parent.children[base]
	n := &node{name: base, layer: layer}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old != nil && old.ino.typ == tar.TypeDir {
			old.ino = t.newInode(hdr)
			old.layer = layer
			return nil
		}
		n.ino, n.children = t.newInode(hdr), map[string]*node{}
	case tar.TypeLink:
		target, err := t.lookup(hdr.Linkname)
		if err != nil {
			return err
		}
		if target == old {
			return nil
		}
		n.ino = target.ino
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		n.ino = t.newInode(hdr)
		n.ino.typ = tar.TypeReg
		if n.ino.dataOff, err = t.spool.add(data, hdr.Size); err != nil {
			return err
		}
		for len(t.files) <= layer {
			t.files = append(t.files, nil)
		}
		t.files[layer] = append(t.files[layer], layerFile{path: p, ino: n.ino})
	case tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		n.ino = t.newInode(hdr)
	default:
		return fmt.Errorf("%w: unsupported tar entry type %q", ErrBadLayer, hdr.Typeflag)
	}
	parent.children[base] = n
	return nil
}

// whiteout applies a .wh. marker found in dir.
func (t *tree) whiteout(layer int, dir *node, base string) {
	switch {
	case base == whiteoutOpaque:
		for name, c := range dir.children {
			if c.layer != layer {
				delete(dir.children, name)
			}
		}
	case strings.HasPrefix(base, whiteoutMeta):
		// Other AUFS metadata (.wh..wh.plnk and friends) carries nothing for us.
	default:
		name := base[len(whiteoutPrefix):]
		if c := dir.children[name]; c != nil && c.layer != layer {
			delete(dir.children, name)
		}
	}
}

// maxSymlinks bounds symlink resolution, as the kernel's ELOOP limit does.
const maxSymlinks = 40

// mkdirAll returns the directory at p, creating missing ones the way tar
// extraction does (0755, root-owned) and replacing other files in the way.
// Symlinks among the components are followed inside the root, as
// containerd's extraction does (a layer writing lib/x when /lib -> usr/lib
// writes usr/lib/x).
func (t *tree) mkdirAll(layer int, p string) (*node, error) {
	return t.resolveDir(p, func(parent *node, name string) *node {
		c := &node{name: name, layer: layer, children: map[string]*node{},
			ino: &inode{typ: tar.TypeDir, mode: 0o755}}
		parent.children[name] = c
		return c
	})
}

// resolveDir walks p from the root following symlinks; create is called for
// a component that is missing or not a directory, and nil means fail.
func (t *tree) resolveDir(p string, create func(parent *node, name string) *node) (*node, error) {
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	n, at, links := t.root, "/", 0
	for len(parts) > 0 {
		name := parts[0]
		parts = parts[1:]
		if name == "" {
			continue // path.Clean left no "." or ".." behind
		}
		c := n.children[name]
		if c != nil && c.ino.typ == tar.TypeSymlink {
			if links++; links > maxSymlinks {
				return nil, fmt.Errorf("%w: too many symlinks resolving %q", ErrBadLayer, p)
			}
			target := c.ino.linkname
			if !path.IsAbs(target) {
				target = path.Join(at, target)
			}
			parts = append(strings.Split(strings.Trim(path.Clean(target), "/"), "/"), parts...)
			n, at = t.root, "/"
			continue
		}
		if c == nil || c.ino.typ != tar.TypeDir {
			if create == nil {
				return nil, fmt.Errorf("%w: %q is not a directory", ErrBadLayer, path.Join(at, name))
			}
			c = create(n, name)
		}
		n, at = c, path.Join(at, name)
	}
	return n, nil
}

// lookup finds a hardlink target; symlinks are followed in its parent
// directories only.
func (t *tree) lookup(name string) (*node, error) {
	dir, base := path.Split(path.Clean("/" + name))
	parent, err := t.resolveDir(dir, nil)
	if err != nil {
		return nil, fmt.Errorf("hardlink target %q: %w", name, err)
	}
	n := parent.children[base]
	if n == nil {
		return nil, fmt.Errorf("%w: hardlink target %q does not exist", ErrBadLayer, name)
	}
	if n.ino.typ == tar.TypeDir {
		return nil, fmt.Errorf("%w: hardlink target %q is a directory", ErrBadLayer, name)
	}
	return n, nil
}

func (t *tree) newInode(hdr *tar.Header) *inode {
	ino := &inode{
		typ: hdr.Typeflag, mode: hdr.Mode & 0o7777, uid: hdr.Uid, gid: hdr.Gid,
		mtime: hdr.ModTime, linkname: hdr.Linkname, major: hdr.Devmajor, minor: hdr.Devminor,
		size: hdr.Size,
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if ino.xattrs == nil {
				ino.xattrs = map[string]string{}
			}
			ino.xattrs[name] = v
		}
	}
	if hdr.Typeflag != tar.TypeReg && hdr.Typeflag != tar.TypeRegA && hdr.Typeflag != tar.TypeGNUSparse {
		ino.size = 0
	}
	return ino
}

// walkInodes is walk that also names, for every name after the first of
// an inode, the path the inode was first visited at ("" the first time):
// how each writer turns shared inodes into hardlinks.
func (t *tree) walkInodes(fn func(p string, n *node, first string) error) error {
	firstAt := map[*inode]string{}
	return t.walk(func(p string, n *node) error {
		first, seen := firstAt[n.ino]
		if !seen {
			firstAt[n.ino] = p
		}
		return fn(p, n, first)
	})
}

// walk visits every name depth-first in sorted order, parents first.
func (t *tree) walk(fn func(p string, n *node) error) error {
	var visit func(p string, n *node) error
	visit = func(p string, n *node) error {
		if err := fn(p, n); err != nil {
			return err
		}
		names := make([]string, 0, len(n.children))
		for name := range n.children {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if err := visit(path.Join(p, name), n.children[name]); err != nil {
				return err
			}
		}
		return nil
	}
	return visit("/", t.root)
}
