package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// toolsDir is where scripts/build-tools.sh builds what Debian lacks.
func toolsDir() string {
	if d := os.Getenv("LAZYBLK_TOOLS"); d != "" {
		return d
	}
	return "/var/cache/lazyblk/tools"
}

// Tool returns the path of a program scripts/build-tools.sh built (dir is
// its NAME-VERSION directory, bin the program). Outside CI a missing one
// skips the test, naming the script; in CI it fails it.
func Tool(t testing.TB, dir, bin string) string {
	t.Helper()
	p := filepath.Join(toolsDir(), dir, bin)
	if _, err := os.Stat(filepath.Join(toolsDir(), dir, ".built")); err == nil {
		return p
	}
	if InCI() {
		t.Fatalf("CI must run this test but lacks %s (scripts/build-tools.sh builds it)", p)
	}
	t.Skipf("needs %s (scripts/build-tools.sh builds it)", p)
	return ""
}

// Built tools, by the directory build-tools.sh gives each.
const (
	ContainerdV2   = "containerd-v2.4.2"
	RuncV1         = "runc-v1.4.4"
	Crictl         = "crictl-v1.37.0"
	DistributionV3 = "distribution-v3.0.0"
)
