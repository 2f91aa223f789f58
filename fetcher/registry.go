package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// ErrNotFound reports a reference that names nothing.
var ErrNotFound = errors.New("fetcher: not found")

// layoutPrefix marks an OCI image layout on disk: oci:DIR[:TAG].
const layoutPrefix = "oci:"

// Location is where an image lives: a registry reference or an OCI image
// layout directory with an optional tag.
type Location struct {
	Ref name.Reference // registry; nil for a layout
	Dir string         // layout directory
	Tag string         // layout tag ("" means the only image)
}

func (l Location) String() string {
	if l.Ref != nil {
		return l.Ref.String()
	}
	if l.Tag != "" {
		return layoutPrefix + l.Dir + ":" + l.Tag
	}
	return layoutPrefix + l.Dir
}

// ParseLocation parses REF or oci:DIR[:TAG]. plainHTTP allows registries
// without TLS (loopback test registries).
func ParseLocation(s string, plainHTTP bool) (Location, error) {
	if rest, ok := strings.CutPrefix(s, layoutPrefix); ok {
		dir, tag := rest, ""
		if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
			dir, tag = rest[:i], rest[i+1:]
		}
		if dir == "" {
			return Location{}, fmt.Errorf("fetcher: %q: empty layout directory", s)
		}
		return Location{Dir: dir, Tag: tag}, nil
	}
	var opts []name.Option
	if plainHTTP {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return Location{}, fmt.Errorf("fetcher: parse reference %q: %w", s, err)
	}
	return Location{Ref: ref}, nil
}

// remoteOptions: docker config.json credentials and helpers, the caller's
// context for cancellation.
func remoteOptions(ctx context.Context, extra ...remote.Option) []remote.Option {
	return append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithTransport(http.DefaultTransport)}, extra...)
}

// ResolveImage resolves l to one image, picking platform from an index.
func ResolveImage(ctx context.Context, l Location, platform *v1.Platform) (v1.Image, error) {
	if l.Ref != nil {
		var opts []remote.Option
		if platform != nil {
			opts = append(opts, remote.WithPlatform(*platform))
		}
		desc, err := remote.Get(l.Ref, remoteOptions(ctx, opts...)...)
		if err != nil {
			return nil, fmt.Errorf("fetcher: %s: %w", l, err)
		}
		img, err := desc.Image()
		if err != nil {
			return nil, fmt.Errorf("fetcher: %s: %w", l, err)
		}
		return img, nil
	}
	idx, desc, err := openLayout(l)
	if err != nil {
		return nil, err
	}
	if desc.MediaType.IsIndex() {
		child, err := idx.ImageIndex(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("fetcher: %s: %w", l, err)
		}
		return pickPlatform(child, platform, l)
	}
	return idx.Image(desc.Digest)
}

// openLayout opens l's layout and finds its tagged entry.
func openLayout(l Location) (v1.ImageIndex, v1.Descriptor, error) {
	idx, err := layout.ImageIndexFromPath(l.Dir)
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("fetcher: %s: %w", l, err)
	}
	desc, err := layoutEntry(idx, l)
	return idx, desc, err
}

// layoutEntry finds the tagged entry (or the only one) in a layout.
func layoutEntry(idx v1.ImageIndex, l Location) (v1.Descriptor, error) {
	m, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("fetcher: %s: %w", l, err)
	}
	var found []v1.Descriptor
	for _, d := range m.Manifests {
		if l.Tag == "" || d.Annotations["org.opencontainers.image.ref.name"] == l.Tag {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0:
		return v1.Descriptor{}, fmt.Errorf("%w: %s", ErrNotFound, l)
	case len(found) > 1:
		return v1.Descriptor{}, fmt.Errorf("fetcher: %s holds %d images; name one as oci:DIR:TAG", l, len(found))
	}
	return found[0], nil
}

func pickPlatform(idx v1.ImageIndex, platform *v1.Platform, l Location) (v1.Image, error) {
	want := v1.Platform{OS: "linux", Architecture: "amd64"}
	if platform != nil {
		want = *platform
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, d := range m.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(want) {
			return idx.Image(d.Digest)
		}
	}
	return nil, fmt.Errorf("%w: %s has no image for platform %s", ErrNotFound, l, want)
}

// oneTry turns go-containerregistry's own retries off where the caller
// retries under its own time model (retry).
var oneTry = remote.WithRetryBackoff(remote.Backoff{Steps: 1})

// Index returns what l names as an image index (converted images are one).
func Index(ctx context.Context, l Location) (v1.ImageIndex, error) { return index(ctx, l) }

func index(ctx context.Context, l Location, extra ...remote.Option) (v1.ImageIndex, error) {
	if l.Ref != nil {
		desc, err := remote.Get(l.Ref, remoteOptions(ctx, extra...)...)
		if err != nil {
			return nil, fmt.Errorf("fetcher: %s: %w", l, err)
		}
		if !desc.MediaType.IsIndex() {
			return nil, fmt.Errorf("%w: %s is a %s, not an image index", ErrNotBlockImage, l, desc.MediaType)
		}
		return desc.ImageIndex()
	}
	root, desc, err := openLayout(l)
	if err != nil {
		return nil, err
	}
	if !desc.MediaType.IsIndex() {
		return nil, fmt.Errorf("%w: %s is a %s, not an image index", ErrNotBlockImage, l, desc.MediaType)
	}
	return root.ImageIndex(desc.Digest)
}

// OpenBlob opens a blob of the repository l names. Callers verify what
// they read against the digest.
func OpenBlob(ctx context.Context, l Location, digest v1.Hash) (io.ReadCloser, error) {
	return openBlob(ctx, l, digest)
}

func openBlob(ctx context.Context, l Location, digest v1.Hash, extra ...remote.Option) (io.ReadCloser, error) {
	if l.Ref != nil {
		blob, err := remote.Layer(l.Ref.Context().Digest(digest.String()), remoteOptions(ctx, extra...)...)
		if err != nil {
			return nil, err
		}
		return blob.Compressed()
	}
	p, err := layout.FromPath(l.Dir)
	if err != nil {
		return nil, err
	}
	return p.Blob(digest)
}

func tagMatcher(tag string) func(v1.Descriptor) bool {
	return func(d v1.Descriptor) bool {
		return tag != "" && d.Annotations["org.opencontainers.image.ref.name"] == tag
	}
}
