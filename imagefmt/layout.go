package imagefmt

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types and annotations of the registry layout (see doc.go).
const (
	MediaTypeArtifact types.MediaType = "application/vnd.lazyblk.image.v1"
	MediaTypeIndex    types.MediaType = "application/vnd.lazyblk.index.v1"
	MediaTypeData     types.MediaType = "application/vnd.lazyblk.data.v1"
	mediaTypeEmpty    types.MediaType = "application/vnd.oci.empty.v1+json"

	// AnnotationIndex names the chunk index blob; containerd copies
	// containerd.io/snapshot/* layer annotations into Prepare labels.
	AnnotationIndex     = "containerd.io/snapshot/lazyblk.index"
	AnnotationIndexSize = "containerd.io/snapshot/lazyblk.index.size"
	AnnotationFS        = "containerd.io/snapshot/lazyblk.fs"
	AnnotationImageSize = "containerd.io/snapshot/lazyblk.image.size"
)

// Annotations returns the annotations that point from a descriptor to the
// block image of r.
func (r *Result) Annotations() map[string]string {
	return map[string]string{
		AnnotationIndex:     r.IndexDigest.String(),
		AnnotationIndexSize: strconv.Itoa(len(r.IndexBlob)),
		AnnotationFS:        r.Index.FS.String(),
		AnnotationImageSize: strconv.FormatUint(r.Index.ImageSize, 10),
	}
}

// layoutImage assembles the image index that gets pushed.
func layoutImage(cfg *v1.ConfigFile, r *Result, fallback bool, fb fallbackBlob) (v1.ImageIndex, error) {
	var data []v1.Layer
	for _, b := range r.Index.Blobs {
		data = append(data, &fileBlob{path: r.blobs[b.Digest], digest: b.Digest, size: int64(b.Size), mt: MediaTypeData})
	}
	indexLayer := static.NewLayer(r.IndexBlob, MediaTypeIndex)

	runLayers := data
	if fallback {
		runLayers = []v1.Layer{&fileBlob{path: filepath.Join(r.dir, fallbackFile), digest: fb.Digest, diffID: fb.DiffID,
			size: fb.Size, mt: types.OCILayer}}
	}
	runnable, err := runnableImage(cfg, runLayers, r.Annotations())
	if err != nil {
		return nil, err
	}
	artifact, err := artifactImage(r, indexLayer, data)
	if err != nil {
		return nil, err
	}
	platform := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant, OSVersion: cfg.OSVersion}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	return mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: runnable, Descriptor: v1.Descriptor{Platform: &platform}},
		// unknown/unknown keeps stock runtimes from ever picking this
		// manifest, as they skip buildx attestation manifests.
		mutate.IndexAddendum{Add: artifact, Descriptor: v1.Descriptor{
			Platform:     &v1.Platform{OS: "unknown", Architecture: "unknown"},
			ArtifactType: string(MediaTypeArtifact),
			Annotations:  r.Annotations(),
		}},
	), nil
}

// runnableImage keeps the source config but for its rootfs and history,
// which now describe the one squashed layer (or, without a fallback, the
// data blobs, which no stock runtime can unpack).
func runnableImage(cfg *v1.ConfigFile, layers []v1.Layer, ann map[string]string) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, layer := range layers {
		var err error
		if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, Annotations: ann, MediaType: mustMT(layer)}); err != nil {
			return nil, err
		}
	}
	base, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	c := cfg.DeepCopy()
	c.RootFS = base.RootFS
	c.History = []v1.History{{Created: c.Created, CreatedBy: "lazyblk convert", Comment: "squashed"}}
	return mutate.ConfigFile(img, c)
}

// artifactImage is the manifest that keeps the index and data blobs
// referenced, so registry garbage collection never drops them.
func artifactImage(r *Result, index v1.Layer, data []v1.Layer) (v1.Image, error) {
	layers := append([]v1.Layer{index}, data...)
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  string(MediaTypeArtifact),
		Config:        v1.Descriptor{MediaType: mediaTypeEmpty, Size: 2, Digest: sha256Hash([]byte("{}"))},
		Annotations:   r.Annotations(),
	}
	for _, l := range layers {
		d, err := partial.Descriptor(l)
		if err != nil {
			return nil, err
		}
		m.Layers = append(m.Layers, *d)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&rawImage{manifest: raw, layers: layers})
}

// rawImage is a manifest we serialised ourselves, with its blobs.
type rawImage struct {
	manifest []byte
	layers   []v1.Layer
}

func (i *rawImage) RawConfigFile() ([]byte, error)      { return []byte("{}"), nil }
func (i *rawImage) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *rawImage) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i *rawImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	for _, l := range i.layers {
		if d, _ := l.Digest(); d == h {
			return l, nil
		}
	}
	if h == sha256Hash([]byte("{}")) {
		return static.NewLayer([]byte("{}"), mediaTypeEmpty), nil
	}
	return nil, fmt.Errorf("imagefmt: no blob %s in artifact", h)
}

// fileBlob is a blob held in a local file whose digest is already known.
type fileBlob struct {
	path           string
	digest, diffID v1.Hash
	size           int64
	mt             types.MediaType
}

func (b *fileBlob) Digest() (v1.Hash, error)            { return b.digest, nil }
func (b *fileBlob) Size() (int64, error)                { return b.size, nil }
func (b *fileBlob) MediaType() (types.MediaType, error) { return b.mt, nil }
func (b *fileBlob) Compressed() (io.ReadCloser, error)  { return os.Open(b.path) }

// DiffID is the layer's uncompressed digest; blobs that are not layer tars
// report their own digest so ggcr never tries to decompress them.
func (b *fileBlob) DiffID() (v1.Hash, error) {
	if b.diffID.Hex == "" {
		return b.digest, nil
	}
	return b.diffID, nil
}

func (b *fileBlob) Uncompressed() (io.ReadCloser, error) {
	if b.diffID.Hex == "" {
		return os.Open(b.path)
	}
	return nil, fmt.Errorf("imagefmt: uncompressed view of %s not needed", b.digest)
}

func mustMT(l v1.Layer) types.MediaType {
	mt, _ := l.MediaType()
	return mt
}
