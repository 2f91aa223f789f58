package imagefmt

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// A prefetch trace is the order in which a workload first touched the
// chunks of a block image. It travels as an OCI artifact whose subject is
// the image (see doc.go): pushing one never rewrites the image.
const (
	// MediaTypeTrace is the trace artifact's artifactType.
	MediaTypeTrace types.MediaType = "application/vnd.lazyblk.trace.v1"
	// MediaTypeTraceBlob is its one blob: the JSON Trace.
	MediaTypeTraceBlob types.MediaType = "application/vnd.lazyblk.trace.v1+json"
	// AnnotationCreated orders traces of one image, newest first.
	AnnotationCreated = "org.opencontainers.image.created"

	traceVersion = 2
	// MaxTraceSize bounds a trace blob: 12 bytes a chunk at most, so 16 MiB
	// covers more than a million chunks.
	MaxTraceSize = 16 << 20
)

// ErrTraceMismatch reports a trace recorded against another chunk index.
var ErrTraceMismatch = errors.New("imagefmt: trace recorded for another chunk index")

// Trace is a recorded access order. Index names the chunk index the
// chunk numbers refer to: its chunks never apply to another image. Its
// files (version 2) do: they name what the start-up read by path, so a
// trace recorded on one version of an image orders the layout of the next
// (convert --startup-trace).
type Trace struct {
	Version   int     `json:"version"`
	Index     v1.Hash `json:"index"`
	ChunkSize int     `json:"chunkSize"`
	Chunks    []int   `json:"chunks"` // first touches, in order, each once
	// Files are the files the start-up read, in the order of their first
	// read, each with the byte ranges of it that were read.
	Files []TraceFile `json:"files,omitempty"`
}

// TraceFile is one file a start-up read.
type TraceFile struct {
	Path   string  `json:"path"`   // absolute, in the image
	Ranges []Range `json:"ranges"` // sorted, not touching each other
}

// Range is Len bytes at Off.
type Range struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// NewTrace returns a trace of chunks (first touches, in order) of the
// chunk index x whose digest is index, and of the files read.
func NewTrace(index v1.Hash, x *Index, chunks []int, files []TraceFile) *Trace {
	return &Trace{Version: traceVersion, Index: index, ChunkSize: int(x.ChunkSize), Chunks: chunks, Files: files}
}

// StartupOrder ranks the trace's files by their first read: what
// WithStartupOrder takes.
func (t *Trace) StartupOrder() []string {
	out := make([]string, len(t.Files))
	for i, f := range t.Files {
		out[i] = f.Path
	}
	return out
}

// DecodeTrace parses and validates a trace blob.
func DecodeTrace(b []byte) (*Trace, error) {
	if len(b) > MaxTraceSize {
		return nil, fmt.Errorf("imagefmt: trace of %d bytes exceeds %d", len(b), MaxTraceSize)
	}
	var t Trace
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("imagefmt: trace: %w", err)
	}
	if t.Version != 1 && t.Version != traceVersion {
		return nil, fmt.Errorf("imagefmt: trace version %d, this build reads 1 and %d", t.Version, traceVersion)
	}
	for _, f := range t.Files {
		if !strings.HasPrefix(f.Path, "/") || len(f.Ranges) == 0 {
			return nil, fmt.Errorf("imagefmt: trace: file %q: want an absolute path and the ranges read", f.Path)
		}
		for _, r := range f.Ranges {
			if r.Off < 0 || r.Len <= 0 {
				return nil, fmt.Errorf("imagefmt: trace: file %q: range %+v", f.Path, r)
			}
		}
	}
	if t.Index.Algorithm != "sha256" || len(t.Index.Hex) != 64 {
		return nil, fmt.Errorf("imagefmt: trace names no sha256 chunk index (%q)", t.Index)
	}
	if err := ValidChunkSize(t.ChunkSize); err != nil {
		return nil, fmt.Errorf("imagefmt: trace: %w", err)
	}
	seen := make(map[int]bool, len(t.Chunks))
	for _, c := range t.Chunks {
		if c < 0 || seen[c] {
			return nil, fmt.Errorf("imagefmt: trace: chunk %d negative or listed twice", c)
		}
		seen[c] = true
	}
	return &t, nil
}

// MarshalBinary encodes the trace blob.
func (t *Trace) MarshalBinary() ([]byte, error) { return json.Marshal(t) }

// Check reports whether the trace applies to the chunk index x whose
// digest is index.
func (t *Trace) Check(index v1.Hash, x *Index) error {
	if t.Index != index {
		return fmt.Errorf("%w: trace names %s, image has %s", ErrTraceMismatch, t.Index, index)
	}
	if t.ChunkSize != int(x.ChunkSize) {
		return fmt.Errorf("%w: trace chunk size %d, image %d", ErrTraceMismatch, t.ChunkSize, x.ChunkSize)
	}
	for _, c := range t.Chunks {
		if c >= len(x.Chunks) {
			return fmt.Errorf("%w: chunk %d beyond the image's %d", ErrTraceMismatch, c, len(x.Chunks))
		}
	}
	return nil
}

// TraceArtifact is the manifest that attaches t to subject (the image's
// top-level descriptor), created at created.
func TraceArtifact(t *Trace, subject v1.Descriptor, created time.Time) (v1.Image, error) {
	b, err := t.MarshalBinary()
	if err != nil {
		return nil, err
	}
	blob := static.NewLayer(b, MediaTypeTraceBlob)
	d, err := partial.Descriptor(blob)
	if err != nil {
		return nil, err
	}
	subject = v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  string(MediaTypeTrace),
		// The config names the type too: registries that list referrers
		// by config media type (as before OCI 1.1) then report it alike.
		Config:      v1.Descriptor{MediaType: MediaTypeTrace, Size: 2, Digest: sha256Hash([]byte("{}"))},
		Layers:      []v1.Descriptor{*d},
		Subject:     &subject,
		Annotations: map[string]string{AnnotationCreated: created.UTC().Format(time.RFC3339Nano)},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return partial.CompressedToImage(&rawImage{manifest: raw, layers: []v1.Layer{blob}})
}
