package fetcher

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

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
	// What describing it took beyond one clean answer: failed attempts
	// retried, and of those, answers that failed verification.
	Retries, VerifyFailures int64
}

// Describe resolves l, finds its lazyblk artifact and fetches and decodes
// the chunk index, verifying it against the digest the manifest names.
// It follows the time model of chunk reads (WithTimeouts): each attempt
// bounded, failed ones retried with backoff, an index that fails its
// digest fetched again, all within the read timeout.
func Describe(ctx context.Context, l Location, opts ...Option) (*Description, error) {
	return describeRetrying(ctx, opts, func(ctx context.Context, d *Description) error { return describe(ctx, l, d) })
}

// DescribePinned is Describe for an index the caller names by digest and
// size: ref only names the repository; no manifest is read.
func DescribePinned(ctx context.Context, l Location, digest v1.Hash, size int64, opts ...Option) (*Description, error) {
	return describeRetrying(ctx, opts, func(ctx context.Context, d *Description) (err error) {
		d.IndexDigest = digest
		d.Index, err = fetchIndex(ctx, l, digest, size)
		return err
	})
}

func describeRetrying(ctx context.Context, opts []Option, fn func(context.Context, *Description) error) (*Description, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.readTimeout)
	defer cancel()
	d := &Description{}
	err = retry(ctx, &o, func(err error) {
		d.Retries++
		if errors.Is(err, ErrDigestMismatch) {
			d.VerifyFailures++
		}
		o.log.Warn("describing the image failed, retrying", "err", err)
	}, func(ctx context.Context) error {
		retries, verify := d.Retries, d.VerifyFailures
		*d = Description{Retries: retries, VerifyFailures: verify}
		return fn(ctx, d)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// describe is one attempt of Describe.
func describe(ctx context.Context, l Location, d *Description) error {
	idx, err := index(ctx, l, oneTry)
	if err != nil {
		return err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return fmt.Errorf("fetcher: %s: %w", l, err)
	}
	if d.ImageIndex, err = idx.Digest(); err != nil {
		return err
	}
	var idxSize int64
	for _, desc := range m.Manifests {
		if v, ok := desc.Annotations[imagefmt.AnnotationIndex]; ok && desc.ArtifactType == string(imagefmt.MediaTypeArtifact) {
			d.Artifact = desc.Digest
			if d.IndexDigest, err = v1.NewHash(v); err != nil {
				return fmt.Errorf("fetcher: %s: annotation %s: %w", l, imagefmt.AnnotationIndex, err)
			}
			if idxSize, err = strconv.ParseInt(desc.Annotations[imagefmt.AnnotationIndexSize], 10, 64); err != nil || idxSize <= 0 || idxSize > maxIndexSize {
				return fmt.Errorf("fetcher: %s: annotation %s: bad size %q", l, imagefmt.AnnotationIndexSize, desc.Annotations[imagefmt.AnnotationIndexSize])
			}
		} else if d.Runnable == (v1.Hash{}) {
			d.Runnable = desc.Digest
		}
	}
	if d.Artifact == (v1.Hash{}) {
		return fmt.Errorf("%w: %s has no %s manifest", ErrNotBlockImage, l, imagefmt.MediaTypeArtifact)
	}
	d.Index, err = fetchIndex(ctx, l, d.IndexDigest, idxSize)
	return err
}

// fetchIndex fetches a chunk index blob once and decodes it; bytes that
// are not what the digest names never decode.
func fetchIndex(ctx context.Context, l Location, digest v1.Hash, size int64) (*imagefmt.Index, error) {
	rc, err := openBlob(ctx, l, digest, oneTry)
	if err != nil {
		return nil, fmt.Errorf("fetcher: index %s: %w", digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, size+1))
	if err != nil && strings.HasPrefix(err.Error(), "error verifying") {
		// go-containerregistry verifies blobs as they are read; its error
		// type is internal, its message is what says so.
		err = fmt.Errorf("%w: %v", ErrDigestMismatch, err)
	}
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
