package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyblk/lazyblk/imagefmt"
)

// ErrNoTrace reports an image with no prefetch trace for its chunk index.
var ErrNoTrace = errors.New("fetcher: no prefetch trace")

// maxTraceCandidates bounds the trace artifacts FindTrace opens: the
// newest few; older ones are history.
const maxTraceCandidates = 8

// Touched returns the chunks readers have touched since the image was
// opened, in the order of their first touch. Prefetch and fill do not
// count: they are not the workload.
func (im *Image) Touched() []int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return slices.Clone(im.order)
}

// PushTrace attaches t to the image l names, as an artifact whose subject
// is the image: on registries with the OCI referrers API the registry
// lists it, on others the referrers tag (sha256-<hex>) does. The image
// itself is not pushed again. t must be a trace of the image's chunk
// index. It returns the artifact's digest.
func PushTrace(ctx context.Context, l Location, t *imagefmt.Trace) (v1.Hash, error) {
	if l.Ref == nil {
		return v1.Hash{}, fmt.Errorf("fetcher: %s: prefetch traces are kept in a registry, not in an image layout", l)
	}
	d, err := Describe(ctx, l)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := t.Check(d.IndexDigest, d.Index); err != nil {
		return v1.Hash{}, fmt.Errorf("fetcher: %s: %w", l, err)
	}
	subject, err := remote.Head(l.Ref.Context().Digest(d.ImageIndex.String()), remoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("fetcher: %s: %w", l, err)
	}
	art, err := imagefmt.TraceArtifact(t, *subject, time.Now())
	if err != nil {
		return v1.Hash{}, err
	}
	h, err := art.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(l.Ref.Context().Digest(h.String()), art, remoteOptions(ctx)...); err != nil {
		return v1.Hash{}, fmt.Errorf("fetcher: push trace for %s: %w", l, err)
	}
	return h, nil
}

// FindTrace returns the newest trace attached to the image l names that
// applies to the chunk index digest, and the trace artifact's digest;
// ErrNoTrace when there is none. A trace artifact that cannot be read or
// is for another index is passed over.
func FindTrace(ctx context.Context, l Location, index v1.Hash, x *imagefmt.Index) (*imagefmt.Trace, v1.Hash, error) {
	if l.Ref == nil {
		return nil, v1.Hash{}, fmt.Errorf("%w: %s is an image layout", ErrNoTrace, l)
	}
	subject, ok := l.Ref.(name.Digest)
	if !ok {
		desc, err := remote.Head(l.Ref, remoteOptions(ctx)...)
		if err != nil {
			return nil, v1.Hash{}, fmt.Errorf("fetcher: %s: %w", l, err)
		}
		subject = l.Ref.Context().Digest(desc.Digest.String())
	}
	refs, err := remote.Referrers(subject, remoteOptions(ctx, remote.WithFilter("artifactType", string(imagefmt.MediaTypeTrace)))...)
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("fetcher: referrers of %s: %w", subject, err)
	}
	list, err := refs.IndexManifest()
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("fetcher: referrers of %s: %w", subject, err)
	}
	cands := slices.Clone(list.Manifests)
	slices.SortStableFunc(cands, func(a, b v1.Descriptor) int { // newest first; RFC 3339 UTC sorts as text
		return -strings.Compare(a.Annotations[imagefmt.AnnotationCreated], b.Annotations[imagefmt.AnnotationCreated])
	})
	var errs []error
	for _, c := range cands[:min(len(cands), maxTraceCandidates)] {
		t, err := readTrace(ctx, l.Ref.Context().Digest(c.Digest.String()))
		if err == nil {
			err = t.Check(index, x)
		}
		if err == nil {
			return t, c.Digest, nil
		}
		errs = append(errs, fmt.Errorf("trace %s: %w", c.Digest, err))
	}
	return nil, v1.Hash{}, fmt.Errorf("%w for %s (index %s) among %d referrers%s", ErrNoTrace, l, index, len(cands), joinedSuffix(errs))
}

// readTrace fetches a trace artifact and its blob; the blob reader fails
// on a digest mismatch.
func readTrace(ctx context.Context, ref name.Digest) (*imagefmt.Trace, error) {
	img, err := remote.Image(ref, remoteOptions(ctx)...)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if m.ArtifactType != string(imagefmt.MediaTypeTrace) || len(m.Layers) != 1 || m.Layers[0].MediaType != imagefmt.MediaTypeTraceBlob {
		return nil, fmt.Errorf("not a %s artifact", imagefmt.MediaTypeTrace)
	}
	if m.Layers[0].Size > imagefmt.MaxTraceSize {
		return nil, fmt.Errorf("trace blob of %d bytes exceeds %d", m.Layers[0].Size, imagefmt.MaxTraceSize)
	}
	rc, err := OpenBlob(ctx, Location{Ref: ref}, m.Layers[0].Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, imagefmt.MaxTraceSize+1))
	if err != nil {
		return nil, err
	}
	return imagefmt.DecodeTrace(b)
}

func joinedSuffix(errs []error) string {
	if len(errs) == 0 {
		return ""
	}
	return ": " + errors.Join(errs...).Error()
}
