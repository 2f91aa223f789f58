package e2e

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// cacheReport is what lazyblk cache stats|gc --json print.
type cacheReport struct {
	Chunks  int
	Bytes   int64
	Evicted int64
	Freed   int64
	Stripes []struct {
		Dir   string
		Bytes int64
	}
}

func cacheCmd(t *testing.T, args ...string) cacheReport {
	t.Helper()
	out, stderr, code := run(t, append(append([]string{"cache"}, args...), "--json")...)
	var r cacheReport
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil {
		t.Fatalf("lazyblk cache %v: exit %d, %v: %s%s", args, code, err, out, stderr)
	}
	return r
}

// TestCacheCommands: cache stats reports what a read left in a two-stripe
// cache; cache gc evicts down to its target; reads after it are still
// exact (evicted chunks are fetched again); bad flags name themselves.
func TestCacheCommands(t *testing.T) {
	reg := testutil.GGCRRegistry(t)
	ref := reg + "/cached/img:v1"
	_, want := testutil.BlockImage(t, ref, 4<<20)
	d1, d2 := t.TempDir(), t.TempDir()
	dirs := []string{"--cache-dir", d1, "--cache-dir", d2}
	cat := func() {
		t.Helper()
		out, stderr, code := run(t, append(append([]string{"cat", "--plain-http"}, dirs...), ref)...)
		if code != 0 || !bytes.Equal([]byte(out), want) {
			t.Fatalf("cat: exit %d, %d of %d bytes: %s", code, len(out), len(want), stderr)
		}
	}
	cat()
	st := cacheCmd(t, append([]string{"stats"}, dirs...)...)
	if st.Chunks == 0 || st.Bytes < 4<<20 || len(st.Stripes) != 2 || st.Stripes[0].Bytes == 0 || st.Stripes[1].Bytes == 0 ||
		st.Stripes[0].Bytes+st.Stripes[1].Bytes != st.Bytes {
		t.Fatalf("stats after a full read: %+v, want the image's chunks over both stripes", st)
	}
	gc := cacheCmd(t, append([]string{"gc", "--target", "1MiB"}, dirs...)...)
	if gc.Bytes > 1<<20 || gc.Freed != st.Bytes-gc.Bytes || gc.Evicted != int64(st.Chunks-gc.Chunks) || gc.Evicted == 0 {
		t.Fatalf("gc --target 1MiB after %+v: %+v", st, gc)
	}
	if again := cacheCmd(t, append([]string{"stats"}, dirs...)...); again.Bytes != gc.Bytes || again.Chunks != gc.Chunks {
		t.Fatalf("stats after gc: %+v, gc said %+v", again, gc)
	}
	cat()
	if empty := cacheCmd(t, append([]string{"gc", "--target", "0"}, dirs...)...); empty.Chunks != 0 || empty.Bytes != 0 {
		t.Errorf("gc --target 0: %+v", empty)
	}
	for _, bad := range [][]string{{"gc", "--target", "lots", "--cache-dir", d1}, {"gc", "--cache-dir", d1}} {
		_, stderr, code := run(t, append([]string{"cache"}, bad...)...)
		if code == 0 || !strings.Contains(stderr, "target") {
			t.Errorf("cache %v: exit %d: %s; want an error naming --target", bad, code, stderr)
		}
	}
}
