package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	overlaysn "github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/imagefmt"
)

// Labels this package reads or sets on snapshots.
const (
	// LabelImageRef is the image reference CRI and `lazyblk pull` pass.
	LabelImageRef = "containerd.io/snapshot/cri.image-ref"
	// LabelRemote marks a committed snapshot whose directory has a block
	// image mounted on it.
	LabelRemote = "containerd.io/snapshot/lazyblk.remote"
)

// Option configures a Snapshotter.
type Option func(*Snapshotter)

// WithPlainHTTP names registries (host or host:port) the fetcher talks
// plain HTTP to.
func WithPlainHTTP(hosts ...string) Option {
	return func(s *Snapshotter) {
		for _, h := range hosts {
			s.plainHTTP[h] = true
		}
	}
}

// Stats counts what Prepare did with lazyblk layers.
type Stats struct {
	Remote    int64 // layers mounted lazily
	Fallbacks int64 // lazyblk layers left to containerd's download and unpack
	// Of Fallbacks, layers whose labels lacked the image reference: a
	// containerd configuration that passes no snapshot annotations.
	Misconfigured int64
}

// Why a lazyblk layer fell back to containerd's download and unpack
// (fetcherv1.Fallback.Reason).
const (
	FallbackLabels = "labels" // its labels lack what the lazy path needs
	FallbackMount  = "mount"  // the lazy mount failed
)

// errNoImageRef is a lazyblk layer whose labels name no image reference;
// the message names the setting that passes one.
var errNoImageRef = errors.New("the layer's labels have no image reference (" + LabelImageRef + "): " +
	"containerd's CRI passes it only with disable_snapshot_annotations = false (containerd 2.x: in " +
	"[plugins.'io.containerd.cri.v1.images']; 1.6: in [plugins.\"io.containerd.grpc.v1.cri\".containerd]); " +
	"for ctr or nerdctl, pull with lazyblk pull")

// overlay is what containerd's overlayfs snapshotter implements.
type overlay interface {
	snapshots.Snapshotter
	snapshots.Cleaner
}

// Snapshotter is containerd's overlayfs snapshotter plus remote lazyblk
// layers (see the package documentation).
type Snapshotter struct {
	overlay   // containerd's overlayfs snapshotter
	root      string
	ms        *storage.MetaStore
	fetcher   fetcherv1.FetcherClient // nil: every lazyblk layer falls back
	plainHTTP map[string]bool

	remote, fallbacks, misconfigured atomic.Int64
}

// New opens (or creates) a snapshotter rooted at root that mounts block
// images through fetcher; it mounts again the block images of remote
// snapshots that lost them.
func New(ctx context.Context, root string, fetcher fetcherv1.FetcherClient, opts ...Option) (*Snapshotter, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	inner, err := overlaysn.NewSnapshotter(root, overlaysn.WithMetaStore(ms))
	if err != nil {
		ms.Close()
		return nil, err
	}
	s := &Snapshotter{overlay: inner.(overlay), root: root, ms: ms, fetcher: fetcher, plainHTTP: map[string]bool{}}
	for _, o := range opts {
		o(s)
	}
	if fetcher != nil {
		s.restore(ctx)
	}
	return s, nil
}

// Stats returns the snapshotter's counters.
func (s *Snapshotter) Stats() Stats {
	return Stats{Remote: s.remote.Load(), Fallbacks: s.fallbacks.Load(), Misconfigured: s.misconfigured.Load()}
}

// target is a lazyblk layer as Prepare's labels describe it.
type target struct {
	chainID     string
	ref         string
	indexDigest string
	indexSize   int64
}

// remoteTarget reads the lazyblk layer chainID from its labels (Prepare's,
// or a committed remote snapshot's); ok is false for an ordinary layer.
func remoteTarget(chainID string, labels map[string]string) (t target, ok bool, err error) {
	t.chainID = chainID
	t.indexDigest = labels[imagefmt.AnnotationIndex]
	if t.chainID == "" || t.indexDigest == "" {
		return t, false, nil
	}
	if t.ref = labels[LabelImageRef]; t.ref == "" {
		return t, true, fmt.Errorf("lazyblk index %s: %w", t.indexDigest, errNoImageRef)
	}
	t.indexSize, err = strconv.ParseInt(labels[imagefmt.AnnotationIndexSize], 10, 64)
	if err != nil || t.indexSize <= 0 {
		return t, true, fmt.Errorf("label %s: bad size %q", imagefmt.AnnotationIndexSize, labels[imagefmt.AnnotationIndexSize])
	}
	return t, true, nil
}

// Prepare creates an active snapshot; for a lazyblk layer it mounts the
// block image as a committed snapshot and returns ErrAlreadyExists.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var info snapshots.Info
	for _, o := range opts {
		if err := o(&info); err != nil {
			return nil, err
		}
	}
	t, ok, err := remoteTarget(info.Labels[snapshots.LabelSnapshotRef], info.Labels)
	if ok && parent == "" {
		if err == nil {
			err = s.prepareRemote(ctx, key, t, opts)
		}
		if err == nil {
			s.remote.Add(1)
			return nil, fmt.Errorf("lazyblk layer %s mounted: %w", t.chainID, errdefs.ErrAlreadyExists)
		}
		s.fallback(t, err)
	}
	return s.overlay.Prepare(ctx, key, parent, opts...)
}

// prepareRemote commits t's snapshot (empty) under its chain ID and mounts
// the block image on its directory. On error nothing is left.
func (s *Snapshotter) prepareRemote(ctx context.Context, key string, t target, opts []snapshots.Opt) error {
	if s.fetcher == nil {
		return errors.New("no fetcher daemon configured")
	}
	if _, err := s.Stat(ctx, t.chainID); err == nil {
		return nil // mounted by an earlier pull
	}
	if _, err := s.overlay.Prepare(ctx, key, "", opts...); err != nil {
		return err
	}
	// Commit before mounting: Commit measures the upper directory, and an
	// empty one costs nothing, where a mounted image would be read whole.
	commitOpts := append(opts, snapshots.WithLabels(map[string]string{LabelRemote: "true"}))
	if err := s.overlay.Commit(ctx, t.chainID, key, commitOpts...); err != nil {
		s.overlay.Remove(ctx, key)
		return err
	}
	id, err := s.id(ctx, t.chainID)
	if err == nil {
		err = s.mountImage(ctx, s.fsDir(id), t)
	}
	if err != nil {
		if rerr := s.overlay.Remove(ctx, t.chainID); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return err
	}
	return nil
}

func (s *Snapshotter) mountImage(ctx context.Context, dir string, t target) error {
	ref, err := name.ParseReference(t.ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", t.ref, err)
	}
	_, err = s.fetcher.Mount(ctx, &fetcherv1.MountRequest{Ref: t.ref, Dir: dir, IndexDigest: t.indexDigest,
		IndexSize: t.indexSize, PlainHttp: s.plainHTTP[ref.Context().RegistryStr()]})
	if err != nil {
		return fmt.Errorf("fetcher: mount %s: %s", t.ref, status.Convert(err).Message())
	}
	return nil
}

func (s *Snapshotter) id(ctx context.Context, key string) (id string, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, _, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return id, err
}

func (s *Snapshotter) fsDir(id string) string { return filepath.Join(s.root, "snapshots", id, "fs") }

var errNotRemote = errors.New("not a remote snapshot")

// Remove removes a snapshot; a remote one's block image is unmounted
// first, inside the metadata transaction, so a failed unmount keeps it.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Labels[LabelRemote] == "" {
			return errNotRemote
		}
		if _, _, err := storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("failed to remove snapshot %s: %w", key, err)
		}
		return s.unmountImage(ctx, s.fsDir(id))
	})
	if errors.Is(err, errNotRemote) {
		return s.overlay.Remove(ctx, key)
	}
	if err != nil {
		return err
	}
	return s.overlay.Cleanup(ctx) // the removed snapshot's directory
}

func (s *Snapshotter) unmountImage(ctx context.Context, dir string) error {
	if s.fetcher == nil {
		return fmt.Errorf("unmount %s: no fetcher daemon configured", dir)
	}
	_, err := s.fetcher.Unmount(ctx, &fetcherv1.UnmountRequest{Dir: dir})
	if err != nil && status.Code(err) != codes.NotFound {
		return fmt.Errorf("fetcher: unmount %s: %s", dir, status.Convert(err).Message())
	}
	return nil
}

// isMountpoint reports whether dir is on another device than its parent.
func isMountpoint(dir string) bool {
	var a, b unix.Stat_t
	if unix.Lstat(dir, &a) != nil || unix.Lstat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// restore mounts again the block image of every remote snapshot that has
// none (the fetcher's state went with a reboot); one that cannot be
// mounted is logged and left: containers on it fail to read until then.
func (s *Snapshotter) restore(ctx context.Context) {
	type lost struct {
		dir string
		t   target
	}
	var todo []lost
	s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Labels[LabelRemote] == "" {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			if dir := s.fsDir(id); !isMountpoint(dir) {
				t, _, err := remoteTarget(info.Name, info.Labels)
				if err != nil {
					slog.Error("restore: remote snapshot without its labels", "name", info.Name, "err", err)
					return nil
				}
				todo = append(todo, lost{dir, t})
			}
			return nil
		})
	})
	for _, l := range todo {
		if err := s.mountImage(ctx, l.dir, l.t); err != nil {
			slog.Error("restore: mount block image", "snapshot", l.t.chainID, "err", err)
		} else {
			slog.Info("restore: mounted block image again", "snapshot", l.t.chainID, "dir", l.dir)
		}
	}
}

// fallback counts and logs a lazyblk layer left to containerd's download
// and unpack, and reports it to the fetcher daemon, whose `lazyblk status`
// shows it: a misconfiguration would otherwise go unnoticed, the node
// quietly pulling whole images.
func (s *Snapshotter) fallback(t target, err error) {
	s.fallbacks.Add(1)
	reason := FallbackMount
	if errors.Is(err, errNoImageRef) {
		reason = FallbackLabels
		s.misconfigured.Add(1)
		slog.Warn("lazyblk layer downloaded whole: containerd is misconfigured", "layer", t.chainID, "err", err)
	} else {
		slog.Warn("lazy mount failed; falling back to download and unpack", "layer", t.chainID, "ref", t.ref, "err", err)
	}
	if s.fetcher == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, rerr := s.fetcher.ReportFallback(ctx, &fetcherv1.Fallback{Layer: t.chainID, Ref: t.ref, Reason: reason,
		Message: err.Error(), UnixMs: time.Now().UnixMilli()})
	if rerr != nil {
		slog.Debug("reporting a fallback to the fetcher daemon", "err", rerr)
	}
}
