package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestConvertAuthFailure: a registry that demands credentials the client
// does not have fails the conversion with the registry's 401, naming it.
func TestConvertAuthFailure(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	push(t, host+"/app:v1", testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{testutil.File("a", 0o644, "a")}, testutil.Gzip, false)))
	target, _ := url.Parse("http://" + host)
	proxy := httputil.NewSingleHostReverseProxy(target)
	locked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := r.BasicAuth(); !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="lazyblk-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(locked.Close)
	lockedHost := strings.TrimPrefix(locked.URL, "http://")
	tmp := t.TempDir()
	_, stderr, code := run(t, "convert", "--plain-http", "--tmp-dir", tmp, lockedHost+"/app:v1", host+"/out:v1")
	if code != 1 || !strings.Contains(stderr, "UNAUTHORIZED") || !strings.Contains(stderr, lockedHost) {
		t.Errorf("exit %d, stderr %q: want exit 1 naming the registry and UNAUTHORIZED", code, stderr)
	}
	assertEmpty(t, tmp)
}

// TestConvertFullDisk: running out of space in --tmp-dir (a 2 MiB tmpfs)
// fails with ENOSPC and leaves nothing behind there.
func TestConvertFullDisk(t *testing.T) {
	testutil.Require(t, true, "mount")
	tmp := t.TempDir()
	testutil.Run(t, "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", tmp)
	t.Cleanup(func() { testutil.Run(t, "umount", tmp) })
	host := testutil.GGCRRegistry(t)
	big := strings.Repeat("incompressible? no, but big enough ", 200000) // ~7 MB
	push(t, host+"/big:v1", testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{testutil.File("big", 0o644, big)}, testutil.Gzip, false)))
	_, stderr, code := run(t, "convert", "--plain-http", "--tmp-dir", tmp, host+"/big:v1", host+"/out:full")
	if code != 1 || !strings.Contains(stderr, "no space left on device") {
		t.Errorf("exit %d, stderr %q: want exit 1 with ENOSPC", code, stderr)
	}
	assertEmpty(t, tmp)
}
