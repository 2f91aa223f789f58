package e2e

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// flipProxy serves the registry at host but flips one byte in the middle
// of the blob whose digest is bad: a registry or network corrupting data.
func flipProxy(t *testing.T, host string, bad v1.Hash) string {
	target, _ := url.Parse("http://" + host)
	p := httputil.NewSingleHostReverseProxy(target)
	p.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method != http.MethodGet || !strings.HasSuffix(r.Request.URL.Path, "/blobs/"+bad.String()) {
			return nil
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		r.Body.Close()
		b[len(b)/2] ^= 0xff
		r.Body = io.NopCloser(bytes.NewReader(b))
		return nil
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestConvertBadInput(t *testing.T) {
	host := testutil.GGCRRegistry(t)
	good := testutil.Image(t, false, testutil.Layer(t, []testutil.Entry{testutil.File("a", 0o644, strings.Repeat("data ", 1000))}, testutil.Uncompressed, false))
	push(t, host+"/good:v1", good)
	goodLayers, _ := good.Layers()
	goodLayer, _ := goodLayers[0].Digest()

	tarball := testutil.Tar(t, []testutil.Entry{testutil.File("a", 0o644, strings.Repeat("x", 100000))})
	gz := testutil.GzipBytes(t, tarball)
	push(t, host+"/corrupt-gzip:v1", testutil.Image(t, false, testutil.RawLayer(gz[:len(gz)/2], types.OCILayer, testutil.SHA256(tarball))))
	push(t, host+"/weird:v1", testutil.Image(t, false, testutil.RawLayer([]byte("x"), "application/vnd.example.weird", testutil.SHA256([]byte("x")))))
	push(t, host+"/wrong-diffid:v1", testutil.Image(t, false, testutil.RawLayer(tarball, types.OCIUncompressedLayer, testutil.SHA256([]byte("other")))))
	flipped := flipProxy(t, host, goodLayer)

	cases := []struct {
		name     string
		args     []string
		code     int
		stderr   string // a substring the error must contain
		dstProbe string // a reference that must not exist afterwards
	}{
		{"no args", []string{"convert"}, 2, "needs SRC and DST", ""},
		{"chunk size not power of two", []string{"convert", "--chunk-size", "3MiB", "a", "b"}, 2, "--chunk-size", ""},
		{"chunk size too small", []string{"convert", "--chunk-size", "4K", "a", "b"}, 2, "65536", ""},
		{"unknown fs", []string{"convert", "--fs", "xfs", "a", "b"}, 2, `unknown filesystem "xfs"`, ""},
		{"unknown compression", []string{"convert", "--compression", "lz4", "a", "b"}, 2, `unknown compression "lz4"`, ""},
		{"bad platform", []string{"convert", "--platform", "linux/amd64/v1/x", "a", "b"}, 2, "--platform", ""},
		{"bad reference", []string{"convert", "UPPER/Case:@@", "b"}, 2, "parse reference", ""},
		{"bad log level", []string{"--log-level", "loud", "inspect", "x"}, 2, "--log-level", ""},
		{"unreachable registry", []string{"convert", "--plain-http", "127.0.0.1:1/x:v1", host + "/out:unreach"}, 1, "127.0.0.1:1", host + "/out:unreach"},
		{"missing image", []string{"convert", "--plain-http", host + "/nope:v1", host + "/out:missing"}, 1, "nope:v1", host + "/out:missing"},
		{"corrupt gzip", []string{"convert", "--plain-http", host + "/corrupt-gzip:v1", host + "/out:gzip"}, 1, "layer 0", host + "/out:gzip"},
		{"unsupported media type", []string{"convert", "--plain-http", host + "/weird:v1", host + "/out:weird"}, 1, "unsupported layer media type: application/vnd.example.weird", host + "/out:weird"},
		{"diff ID mismatch", []string{"convert", "--plain-http", host + "/wrong-diffid:v1", host + "/out:diffid"}, 1, "config names diff ID", host + "/out:diffid"},
		{"layer digest mismatch", []string{"convert", "--plain-http", flipped + "/good:v1", host + "/out:flipped"}, 1, "layer 0", host + "/out:flipped"},
		{"inspect a plain image", []string{"inspect", "--plain-http", host + "/good:v1"}, 1, "not a lazyblk block image", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			args := append([]string{}, c.args...)
			if args[0] == "convert" {
				args = append([]string{"convert", "--tmp-dir", tmp}, args[1:]...)
			}
			_, stderr, code := run(t, args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, c.code, stderr)
			}
			if !strings.Contains(stderr, c.stderr) {
				t.Errorf("stderr %q does not mention %q", stderr, c.stderr)
			}
			assertEmpty(t, tmp)
			if c.dstProbe != "" {
				ref, _ := name.ParseReference(c.dstProbe, name.Insecure)
				if _, err := remote.Head(ref); err == nil {
					t.Errorf("%s exists after a failed convert", c.dstProbe)
				}
			}
		})
	}
}
