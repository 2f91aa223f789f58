package testutil

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Versions are four versions of one image, as a node meets them: A, a
// base layer of many small files (an OS and a language runtime), a
// packages layer with a large library among small modules, and a weights
// layer; B, A plus a small app layer on top; C, A with a few small files
// of the packages layer changed; D, A with other weights.
type Versions struct {
	A, B, C, D v1.Image
	// WeightsSize is the size of the weights file, what D changes whole.
	WeightsSize int
}

// VersionSizes sets how big Versions' layers are.
type VersionSizes struct {
	BaseFiles int // small files in the base layer (200 B to 16 KiB)
	Library   int // bytes of the large library in the packages layer
	Modules   int // small files beside it
	Weights   int // bytes of the weights file
}

// MakeVersions builds the four versions, deterministically.
func MakeVersions(t testing.TB, s VersionSizes) Versions {
	t.Helper()
	base := Layer(t, smallFiles("usr/lib/runtime", s.BaseFiles, 1, nil), Gzip, false)
	packages := func(changed map[int]string) v1.Layer {
		e := append([]Entry{Dir("opt/", 0o755), Dir("opt/pkg/", 0o755),
			File("opt/pkg/libbig.so", 0o755, string(Random(s.Library, 2)))},
			smallFiles("opt/pkg/modules", s.Modules, 3, changed)...)
		return Layer(t, e, Gzip, false)
	}
	weights := func(seed byte) v1.Layer {
		return Layer(t, []Entry{Dir("models/", 0o755), File("models/weights.bin", 0o644, string(Random(s.Weights, seed)))},
			Uncompressed, false)
	}
	app := Layer(t, []Entry{Dir("app/", 0o755), File("app/main.py", 0o644, "import runtime\nruntime.serve()\n"),
		File("app/config.json", 0o644, `{"model": "/models/weights.bin", "port": 8080}`),
		File("app/README", 0o644, strings.Repeat("how to run the app\n", 200))}, Gzip, false)
	a := []v1.Layer{base, packages(nil), weights(4)}
	changed := map[int]string{s.Modules / 4: "# patched\n", s.Modules / 2: "# patched too\n", 3 * s.Modules / 4: "# and this\n"}
	return Versions{
		A:           Image(t, false, a...),
		B:           Image(t, false, append(a[:3:3], app)...),
		C:           Image(t, false, base, packages(changed), a[2]),
		D:           Image(t, false, base, a[1], weights(5)),
		WeightsSize: s.Weights,
	}
}

// smallFiles makes n text files under dir, 200 B to 16 KiB, the same for
// the same seed; changed appends a line to the files it names by number.
func smallFiles(dir string, n int, seed uint64, changed map[int]string) []Entry {
	r := rand.New(rand.NewPCG(seed, 7))
	var out []Entry
	parts := strings.Split(dir, "/")
	for i := range parts {
		out = append(out, Dir(strings.Join(parts[:i+1], "/")+"/", 0o755))
	}
	for i := range n {
		size := 200 + r.IntN(16<<10)
		var b strings.Builder
		for b.Len() < size {
			fmt.Fprintf(&b, "def f%d_%d(x): return x * %d\n", i, b.Len(), r.IntN(1000))
		}
		body := b.String()[:size] + changed[i]
		out = append(out, File(fmt.Sprintf("%s/mod%04d.py", dir, i), 0o644, body))
	}
	return out
}
