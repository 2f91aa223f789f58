package e2e

import (
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestConvertPlatform converts each platform of a multi-platform source
// and checks the runnable manifest carries that platform and its content.
func TestConvertPlatform(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	platforms := map[string]v1.Platform{
		"amd64": {OS: "linux", Architecture: "amd64"},
		"arm64": {OS: "linux", Architecture: "arm64", Variant: "v8"},
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for arch, p := range platforms {
		img := testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{testutil.File("arch", 0o644, arch)}, testutil.Gzip, false))
		cfg, _ := img.ConfigFile()
		cfg = cfg.DeepCopy()
		cfg.Architecture, cfg.Variant = p.Architecture, p.Variant
		img, _ = mutate.ConfigFile(img, cfg)
		p := p
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	ref, _ := name.ParseReference(host+"/multi:v1", name.Insecure)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	for arch, p := range platforms {
		t.Run(arch, func(t *testing.T) {
			dst := host + "/multi:" + arch + "-lazyblk"
			if _, stderr, code := run(t, "convert", "--plain-http", "--platform", p.String(), host+"/multi:v1", dst); code != 0 {
				t.Fatalf("convert: exit %d: %s", code, stderr)
			}
			out, _, _ := run(t, "inspect", "--plain-http", "--json", dst)
			var got inspected
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatal(err)
			}
			r, _ := name.ParseReference(dst, name.Insecure)
			img, err := remote.Image(r, remote.WithPlatform(p))
			if err != nil {
				t.Fatal(err)
			}
			cfg, _ := img.ConfigFile()
			if d, _ := img.Digest(); cfg.Architecture != p.Architecture || cfg.Variant != p.Variant || d.String() != got.RunnableManifest {
				t.Errorf("runnable manifest %s is %s/%s", d, cfg.Architecture, cfg.Variant)
			}
			tree := treeFromRegistry(t, dst, got)
			if tree["arch"].Size != int64(len(arch)) {
				t.Errorf("converted tree holds another platform's file: %+v", tree["arch"])
			}
		})
	}
	if _, stderr, code := run(t, "convert", "--plain-http", "--platform", "linux/s390x", host+"/multi:v1", host+"/multi:s390x"); code != 1 {
		t.Errorf("missing platform: exit %d, stderr %s", code, stderr)
	}
}
