package fetcher

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// PushProgress counts a push's bytes as it goes (registries only).
type PushProgress struct {
	Done, Total atomic.Int64
}

// PushReport says what a push sent and what it did not need to: a block
// image shares its layer regions' blobs with every image built on the same
// layers, and the registry keeps one copy of each.
type PushReport struct {
	Blobs        int   `json:"blobs"`        // blobs the image references (configs, layers, data)
	Bytes        int64 `json:"bytes"`        // their size
	Present      int   `json:"present"`      // of them, those the repository had already: not sent
	PresentBytes int64 `json:"presentBytes"` // their size
	Mounted      int   `json:"mounted"`      // those mounted from another repository of the registry: not sent
	MountedBytes int64 `json:"mountedBytes"` // their size
}

// Sent is the blob bytes the push uploaded.
func (r PushReport) Sent() int64 { return r.Bytes - r.PresentBytes - r.MountedBytes }

// PushOptions configure PushWithOptions.
type PushOptions struct {
	// Progress counts bytes as they go (nil: not counted).
	Progress *PushProgress
	// MountFrom names repositories of the destination's registry that may
	// hold some of the blobs (an earlier version of the image, its base):
	// a blob the destination lacks and one of them has is mounted, not
	// uploaded, where the registry offers cross-repository mounts.
	MountFrom []Location
}

// Push writes idx to l: blobs first, child manifests next, the tag last,
// so a failure leaves no tag naming a partial image. A layout directory
// that did not exist is written beside its final name and renamed.
func Push(ctx context.Context, l Location, idx v1.ImageIndex) error {
	_, err := PushWithOptions(ctx, l, idx, PushOptions{})
	return err
}

// PushWithOptions is Push that reports which blobs the destination had
// already and mounts blobs from other repositories.
func PushWithOptions(ctx context.Context, l Location, idx v1.ImageIndex, o PushOptions) (PushReport, error) {
	blobs, err := indexBlobs(idx)
	if err != nil {
		return PushReport{}, fmt.Errorf("fetcher: push %s: %w", l, err)
	}
	var rep PushReport
	for _, b := range blobs {
		size, _ := b.Size()
		rep.Blobs, rep.Bytes = rep.Blobs+1, rep.Bytes+size
	}
	if l.Ref == nil {
		return rep, pushLayout(l, idx)
	}
	if err := premount(ctx, l, blobs, o.MountFrom, &rep); err != nil {
		return rep, err
	}
	var opts []remote.Option
	done := make(chan struct{})
	if o.Progress != nil {
		updates := make(chan v1.Update, 16)
		go func() {
			defer close(done)
			for u := range updates { // closed by ggcr when the write ends
				o.Progress.Done.Store(u.Complete)
				o.Progress.Total.Store(u.Total)
			}
		}()
		opts = append(opts, remote.WithProgress(updates))
	} else {
		close(done)
	}
	if err := remote.WriteIndex(l.Ref, idx, remoteOptions(ctx, opts...)...); err != nil {
		return rep, fmt.Errorf("fetcher: push %s: %w", l, err)
	}
	<-done
	return rep, nil
}

// premount asks the registry which blobs the destination has (HEAD, a
// few at once) and mounts the ones it lacks that a MountFrom repository
// holds.
func premount(ctx context.Context, l Location, blobs map[v1.Hash]v1.Layer, from []Location, rep *PushReport) error {
	dst := l.Ref.Context()
	type found struct {
		present bool
		from    *name.Repository
	}
	results := make(map[v1.Hash]*found, len(blobs))
	for d := range blobs {
		results[d] = &found{}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for d, f := range results {
		g.Go(func() error {
			var err error
			if f.present, err = blobExists(gctx, dst.Digest(d.String())); err != nil || f.present {
				return err
			}
			for _, src := range from {
				if src.Ref == nil || src.Ref.Context().RegistryStr() != dst.RegistryStr() {
					continue
				}
				repo := src.Ref.Context()
				if ok, err := blobExists(gctx, repo.Digest(d.String())); err == nil && ok {
					f.from = &repo
					return nil
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("fetcher: push %s: %w", l, err)
	}
	for d, f := range results {
		size, _ := blobs[d].Size()
		switch {
		case f.present:
			rep.Present, rep.PresentBytes = rep.Present+1, rep.PresentBytes+size
		case f.from != nil:
			ml := &remote.MountableLayer{Layer: blobs[d], Reference: f.from.Digest(d.String())}
			if err := remote.WriteLayer(dst, ml, remoteOptions(ctx)...); err != nil {
				return fmt.Errorf("fetcher: push %s: mount %s from %s: %w", l, d, f.from, err)
			}
			rep.Mounted, rep.MountedBytes = rep.Mounted+1, rep.MountedBytes+size
		}
	}
	return nil
}

// blobExists asks the registry whether it holds the blob ref names.
func blobExists(ctx context.Context, ref name.Digest) (bool, error) {
	l, err := remote.Layer(ref, remoteOptions(ctx)...)
	if err != nil {
		return false, err
	}
	e, ok := l.(interface{ Exists() (bool, error) })
	if !ok {
		return false, nil
	}
	return e.Exists()
}

// indexBlobs returns every blob the index's manifests reference: configs
// and layers, each once.
func indexBlobs(idx v1.ImageIndex) (map[v1.Hash]v1.Layer, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	out := map[v1.Hash]v1.Layer{}
	for _, d := range m.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		layers, err := img.Layers()
		if err != nil {
			return nil, err
		}
		for _, l := range layers {
			dg, err := l.Digest()
			if err != nil {
				return nil, err
			}
			out[dg] = l
		}
	}
	return out, nil
}

// pushLayout writes idx into an OCI image layout.
func pushLayout(l Location, idx v1.ImageIndex) error {
	var opts []layout.Option
	if l.Tag != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": l.Tag}))
	}
	if p, err := layout.FromPath(l.Dir); err == nil {
		if err := p.ReplaceIndex(idx, tagMatcher(l.Tag), opts...); err != nil {
			return fmt.Errorf("fetcher: write %s: %w", l, err)
		}
		return nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(l.Dir)), ".lazyblk-layout-*")
	if err != nil {
		return fmt.Errorf("fetcher: write %s: %w", l, err)
	}
	p, err := layout.Write(tmp, empty.Index)
	if err == nil {
		err = p.AppendIndex(idx, opts...)
	}
	if err == nil {
		err = os.Rename(tmp, l.Dir)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("fetcher: write %s: %w", l, err), os.RemoveAll(tmp))
	}
	return nil
}
