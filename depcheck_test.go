package lazyblk_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps dependencies flowing one way:
// cmd → snapshotter, fetcherd → mounts → blockdev → fetcher, cache → imagefmt.
// The snapshotter reaches mounts only through the fetcher daemon's API
// (api/); config is read by cmd alone.
func TestImportDirection(t *testing.T) {
	allowed := map[string][]string{
		"imagefmt":    {},
		"cache":       {"imagefmt"},
		"fetcher":     {"imagefmt", "cache"},
		"blockdev":    {"fetcher", "cache", "imagefmt"},
		"mounts":      {"blockdev", "fetcher", "cache", "imagefmt"},
		"fetcherd":    {"api", "mounts", "blockdev", "fetcher", "cache", "imagefmt"},
		"lazy":        {"mounts", "blockdev", "fetcher", "cache", "imagefmt"},
		"snapshotter": {"api", "imagefmt"},
		"api":         {},
		"config":      {},
	}
	const mod = "github.com/lazyblk/lazyblk/"
	for pkg, ok := range allowed {
		out, err := exec.Command("go", "list", "-deps", "./"+pkg+"/...").Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			rest, found := strings.CutPrefix(dep, mod)
			top := strings.Split(rest, "/")[0]
			if !found || top == pkg {
				continue
			}
			good := false
			for _, a := range ok {
				good = good || a == top
			}
			if !good {
				t.Errorf("%s imports %s, which the dependency direction forbids", pkg, dep)
			}
		}
	}
}
