package lazy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/mounts"
)

// Option configures Open.
type Option func(*mounts.Source) error

// WithCache reads through the chunk cache striped over dirs (one per
// volume), bounded to size bytes.
func WithCache(dirs []string, size int64) Option {
	return func(s *mounts.Source) error {
		if len(dirs) == 0 || size <= 0 {
			return errors.New("lazy: a cache needs at least one directory and a positive size")
		}
		s.CacheDirs, s.CacheSize = dirs, size
		return nil
	}
}

// WithPlainHTTP talks plain HTTP to the registry (a loopback registry).
func WithPlainHTTP() Option { return func(s *mounts.Source) error { s.PlainHTTP = true; return nil } }

// WithHostsDir reads containerd's hosts.toml directory: mirrors, CAs and
// client certificates.
func WithHostsDir(dir string) Option {
	return func(s *mounts.Source) error { s.HostsDir = dir; return nil }
}

// WithTimeouts bounds one range request (retried up to 4 times) and one
// block read, retries included (fetcher.WithTimeouts).
func WithTimeouts(attempt, read time.Duration) Option {
	return func(s *mounts.Source) error { s.AttemptTimeout, s.ReadTimeout = attempt, read; return nil }
}

// Image is an opened block image.
type Image struct {
	src   mounts.Source
	im    *fetcher.Image
	index v1.Hash
	loc   fetcher.Location
}

// Open resolves ref (registry/repo:tag, @digest, or oci:DIR[:TAG]) and
// fetches its chunk index.
func Open(ctx context.Context, ref string, opts ...Option) (*Image, error) {
	src := mounts.Source{Ref: ref}
	for _, o := range opts {
		if err := o(&src); err != nil {
			return nil, err
		}
	}
	loc, err := fetcher.ParseLocation(ref, src.PlainHTTP)
	if err != nil {
		return nil, err
	}
	im, index, err := src.Open(ctx)
	if err != nil {
		return nil, err
	}
	return &Image{src: src, im: im, index: index, loc: loc}, nil
}

// Ref is the reference the image was opened by.
func (i *Image) Ref() string { return i.src.Ref }

// Size is the size of the filesystem image in bytes.
func (i *Image) Size() int64 { return i.im.Size() }

// FS is the filesystem in the image: erofs or ext4.
func (i *Image) FS() string { return i.im.Index().FS.String() }

// ReadAt reads the filesystem image's bytes, fetching what is missing.
func (i *Image) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	return i.im.ReadAt(ctx, p, off)
}

// Cached is how many of the image's bytes the cache holds.
func (i *Image) Cached() int64 { return i.im.Cached() }

// WarmReport is what Warm fetched.
type WarmReport = mounts.WarmReport

// Warm fetches into the cache, without a mount, the chunks of the image's
// newest prefetch trace, or with all every chunk; progress (may be nil)
// sees the cached bytes as they grow. It needs WithCache.
func (i *Image) Warm(ctx context.Context, all bool, progress func(cached, size int64)) (*WarmReport, error) {
	if len(i.src.CacheDirs) == 0 {
		return nil, fmt.Errorf("warm %s: %w", i.src.Ref, fetcher.ErrNoCache)
	}
	return mounts.Warm(ctx, i.im, i.index, i.loc, all, progress)
}

// Serve exports the image read-only over NBD on l (the export is named by
// the image's reference and is also the default one) until ctx ends, and
// returns what it served; it closes l. opts configure the server
// (blockdev.WithTLS, timeouts). While idle, the image gives its memory
// back.
func (i *Image) Serve(ctx context.Context, l net.Listener, opts ...blockdev.Option) (blockdev.Stats, error) {
	srv, err := i.server(opts...)
	if err != nil {
		l.Close()
		return blockdev.Stats{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go mounts.TrimWhenIdle(ctx, i.im)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err = <-done:
	case <-ctx.Done():
	}
	srv.Close()
	return srv.Stats(), err
}

func (i *Image) server(opts ...blockdev.Option) (*blockdev.Server, error) {
	return blockdev.NewServer([]blockdev.Export{{Name: i.src.Ref, Backend: i.im}}, opts...)
}

// Attach modes for Mount (blockdev's).
const (
	AttachAuto    = "auto"
	AttachUblk    = blockdev.AttachUblk
	AttachNetlink = blockdev.AttachNetlink
	AttachNBDFuse = blockdev.AttachNBDFuse
)

// Mount is the image mounted read-only on a directory by this process,
// which serves its reads until Close.
type Mount struct {
	Dir    string // where the filesystem is
	Device string // the block device (or nbdfuse's file) under it
	Attach string // the attach mode taken

	m    *blockdev.Mount
	srv  *blockdev.Server
	work string
}

// Mount attaches the image as a block device (attach: AttachAuto takes
// ublk, then kernel NBD, then nbdfuse) and mounts its filesystem
// read-only on dir, served by this process until Close. On error nothing
// is left attached or mounted.
func (i *Image) Mount(ctx context.Context, dir, attach string) (*Mount, error) {
	if attach == "" || attach == AttachAuto {
		attach = blockdev.AutoAttach()
	}
	work, err := os.MkdirTemp("", "lazyblk-mount-")
	if err != nil {
		return nil, err
	}
	srv, err := i.server()
	if err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	m, err := blockdev.MountImage(srv, i.src.Ref, i.im.Size(), blockdev.MountConfig{Dir: dir, FS: i.FS(), Attach: attach,
		Work: work, Backend: i.src.Ref})
	if err != nil {
		srv.Close()
		os.RemoveAll(work)
		return nil, fmt.Errorf("mount %s on %s: %w", i.src.Ref, dir, err)
	}
	return &Mount{Dir: dir, Device: m.Source, Attach: attach, m: m, srv: srv, work: work}, nil
}

// Close unmounts the filesystem (refusing while it is busy) and detaches
// the device; reads still in flight fail.
func (m *Mount) Close() error {
	if err := m.m.Unmount(); err != nil {
		return err
	}
	m.srv.Close()
	return os.RemoveAll(m.work)
}

// Close releases the image; mounts and exports of it must be closed
// first.
func (i *Image) Close() error { return i.im.Close() }
