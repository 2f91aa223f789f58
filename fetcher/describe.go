package fetcher

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyblk/lazyblk/imagefmt"
)

// ErrDigestMismatch reports fetched bytes that are not what their digest names.
var ErrDigestMismatch = errors.New("fetcher: digest mismatch")

// ErrNotBlockImage reports an image that lazyblk convert did not produce.
var ErrNotBlockImage = errors.New("fetcher: not a lazyblk block image")

// maxIndexSize bounds an index blob: 48 bytes a chunk, so 64 MiB covers
// images far beyond any filesystem lazyblk writes with 64 KiB chunks.
const maxIndexSize = 64 << 20

// Description is what a converted image names: its manifests and the
// verified chunk index.
type Description struct {
	ImageIndex  v1.Hash // the pushed image index
	Runnable    v1.Hash // the manifest stock runtimes run
	Artifact    v1.Hash // the manifest holding index and data blobs
	IndexDigest v1.Hash
	Index       *imagefmt.Index
}

// Describe resolves l, finds its lazyblk artifact and fetches and decodes
// the chunk index, verifying it against the digest the manifest names.
func Describe(ctx context.Context, l Location) (*Description, error) {
	idx, err := Index(ctx, l)
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("fetcher: %s: %w", l, err)
	}
	d := &Description{}
	if d.ImageIndex, err = idx.Digest(); err != nil {
		return nil, err
	}
	var idxSize int64
	for _, desc := range m.Manifests {
		if v, ok := desc.Annotations[imagefmt.AnnotationIndex]; ok && desc.ArtifactType == string(imagefmt.MediaTypeArtifact) {
			d.Artifact = desc.Digest
			if d.IndexDigest, err = v1.NewHash(v); err != nil {
				return nil, fmt.Errorf("fetcher: %s: annotation %s: %w", l, imagefmt.AnnotationIndex, err)
			}
			if idxSize, err = strconv.ParseInt(desc.Annotations[imagefmt.AnnotationIndexSize], 10, 64); err != nil || idxSize <= 0 || idxSize > maxIndexSize {
				return nil, fmt.Errorf("fetcher: %s: annotation %s: bad size %q", l, imagefmt.AnnotationIndexSize, desc.Annotations[imagefmt.AnnotationIndexSize])
			}
		} else if d.Runnable == (v1.Hash{}) {
			d.Runnable = desc.Digest
		}
	}
	if d.Artifact == (v1.Hash{}) {
		return nil, fmt.Errorf("%w: %s has no %s manifest", ErrNotBlockImage, l, imagefmt.MediaTypeArtifact)
	}
	if d.Index, err = FetchIndex(ctx, l, d.IndexDigest, idxSize); err != nil {
		return nil, err
	}
	return d, nil
}

// FetchIndex fetches a chunk index blob and decodes it; the blob reader
// fails on a digest mismatch, so a tampered index never decodes.
func FetchIndex(ctx context.Context, l Location, digest v1.Hash, size int64) (*imagefmt.Index, error) {
	rc, err := OpenBlob(ctx, l, digest)
	if err != nil {
		return nil, fmt.Errorf("fetcher: index %s: %w", digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, size+1))
	if err != nil {
		return nil, fmt.Errorf("fetcher: index %s: %w", digest, err)
	}
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); int64(len(b)) != size || got != digest.String() {
		return nil, fmt.Errorf("fetcher: index %s: %w: got %d bytes with digest %s, want %d bytes", digest, ErrDigestMismatch, len(b), got, size)
	}
	x, err := imagefmt.DecodeIndex(b)
	if err != nil {
		return nil, fmt.Errorf("fetcher: index %s: %w", digest, err)
	}
	return x, nil
}
