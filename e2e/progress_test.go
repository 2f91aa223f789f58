package e2e

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestConvertProgress: on a terminal (script(1) gives the command a
// pseudo-terminal) convert draws progress bars redrawn in place; into a
// pipe, or with --json, it draws none.
func TestConvertProgress(t *testing.T) {
	testutil.Require(t, false, "script")
	reg := testutil.GGCRRegistry(t)
	src := reg + "/progress/app:v1"
	push(t, src, testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{randomFile("weights", 8<<20, 9)}, testutil.Gzip, false)))

	cmd := exec.Command("script", "-qec", lazyblk+" convert --plain-http "+src+" "+src+"-tty", "/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("convert on a terminal: %v\n%s", err, out)
	}
	for _, want := range []string{`\r  block image written  \d`, `\r  pushed  \[#+\] [\d.]+ \S+ / [\d.]+ \S+  100%`} {
		if !regexp.MustCompile(want).Match(out) {
			t.Errorf("convert on a terminal: no line matching %q in:\n%q", want, out)
		}
	}
	_, stderr, code := run(t, "convert", "--plain-http", src, src+"-pipe")
	if code != 0 || strings.Contains(stderr, "\r") || !strings.Contains(stderr, "pushing to") {
		t.Errorf("convert into a pipe: exit %d, want stage lines and no progress bars: %q", code, stderr)
	}
}
