package blockdev_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/internal/testutil"
)

// served is an image behind a lazyblk NBD server on a unix socket.
type served struct {
	uri  string // nbd+unix:///NAME?socket=PATH
	want []byte // the filesystem image's exact bytes
	im   *fetcher.Image
	srv  *blockdev.Server
}

// serve converts a generated image, pushes it to a registry on loopback
// (through proxy, when given, which may inject faults), opens it with the
// fetcher and serves it as export "img".
func serve(t *testing.T, proxy func(host string) string, opts ...fetcher.Option) *served {
	t.Helper()
	host := testutil.GGCRRegistry(t)
	loc, want := testutil.BlockImage(t, host+"/nbd/img:v1", 3<<20)
	if proxy != nil {
		var err error
		if loc, err = fetcher.ParseLocation(proxy(host)+"/nbd/img:v1", true); err != nil {
			t.Fatal(err)
		}
	}
	im, err := fetcher.Open(context.Background(), loc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	srv, uri := listen(t, "unix", blockdev.Export{Name: "img", Description: "test image", Backend: im})
	return &served{uri: uri, want: want, im: im, srv: srv}
}

// listen serves export on a unix socket or on TCP loopback (network
// "unix" or "tcp") until the test ends, and returns the server and the
// export's NBD URI.
func listen(t *testing.T, network string, export blockdev.Export) (*blockdev.Server, string) {
	t.Helper()
	srv, err := blockdev.NewServer([]blockdev.Export{export})
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "nbd.sock")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	uri := "nbd://" + l.Addr().String() + "/" + export.Name
	if network == "unix" {
		uri = "nbd+unix:///" + export.Name + "?socket=" + addr
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, uri
}

func TestNbdinfo(t *testing.T) {
	testutil.Require(t, false, "nbdinfo")
	s := serve(t, nil)
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name     string `json:"export-name"`
			Desc     string `json:"description"`
			Size     int64  `json:"export-size"`
			ReadOnly bool   `json:"is_read_only"`
			Multi    bool   `json:"can_multi_conn"`
			Trim     bool   `json:"can_trim"`
			MinBlock int64  `json:"block_size_minimum"`
			PrefBlk  int64  `json:"block_size_preferred"`
			MaxBlock int64  `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(testutil.Run(t, "nbdinfo", "--json", s.uri)), &info); err != nil {
		t.Fatal(err)
	}
	if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %+v", info)
	}
	e := info.Exports[0]
	if e.Name != "img" || e.Desc != "test image" || e.Size != int64(len(s.want)) || !e.ReadOnly || !e.Multi || e.Trim {
		t.Errorf("export: %+v, want img, size %d, read-only, multi-conn, no trim", e, len(s.want))
	}
	if e.MinBlock != 1 || e.PrefBlk != 4096 || e.MaxBlock != 32<<20 {
		t.Errorf("block sizes %d/%d/%d, want 1/4096/32MiB", e.MinBlock, e.PrefBlk, e.MaxBlock)
	}
	// --list walks NBD_OPT_LIST; the default export answers to "".
	if out := testutil.Run(t, "nbdinfo", "--list", "--json", s.uri); !strings.Contains(out, `"export-name": "img"`) {
		t.Errorf("nbdinfo --list does not name img:\n%s", out)
	}
	def := strings.Replace(s.uri, "///img?", "///?", 1)
	if out := testutil.Run(t, "nbdinfo", "--size", def); strings.TrimSpace(out) != fmt.Sprint(len(s.want)) {
		t.Errorf("default export size %q, want %d", out, len(s.want))
	}
	if out, err := runOut("nbdinfo", strings.Replace(s.uri, "///img?", "///nosuch?", 1)); err == nil {
		t.Errorf("nbdinfo of an unknown export succeeded:\n%s", out)
	}
}

func TestNbdcopyManyConnections(t *testing.T) {
	testutil.Require(t, false, "nbdcopy")
	s := serve(t, nil)
	out := filepath.Join(t.TempDir(), "copy")
	testutil.Run(t, "nbdcopy", "--connections=4", "--requests=64", "--request-size=65536", s.uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, s.want) {
		t.Fatalf("nbdcopy: %d bytes differ from the image's %d", len(got), len(s.want))
	}
	if st := s.srv.Stats(); st.Bytes != int64(len(s.want)) || st.Errors != 0 {
		t.Errorf("server stats %+v, want %d bytes and no errors", st, len(s.want))
	}
}

func TestQemuImgConvert(t *testing.T) {
	testutil.Require(t, false, "qemu-img")
	s := serve(t, nil)
	out := filepath.Join(t.TempDir(), "converted")
	testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, s.want) {
		t.Fatal("qemu-img convert: bytes differ from the image")
	}
}

// TestReadErrorKeepsConnection makes the registry fail every range request
// that covers one chunk: libnbd's client gets EIO for it, and reads of
// other chunks on the same connection keep working. Writes get EPERM and
// reads past the end EINVAL.
func TestReadErrorKeepsConnection(t *testing.T) {
	testutil.Require(t, false, "/usr/bin/python3")
	var bad rangeMatch // the chunk whose fetches fail, once known
	s := serve(t, func(host string) string {
		return testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
			if bad.matches(r) {
				return testutil.Status503
			}
			return testutil.Pass
		})
	}, fetcher.WithTimeouts(time.Second, 1, 5*time.Second))
	k, blob, off := storedChunk(s.im)
	bad.set(blob, off)
	badOff := int64(k) * int64(s.im.Index().ChunkSize)
	sum := sha256.Sum256(s.want[:4096])
	script := fmt.Sprintf(`
import errno, hashlib, nbd
h = nbd.NBD()
h.connect_uri(%q)
def expect(e, f):
    try:
        f()
        print("no error")
    except nbd.Error as err:
        print(errno.errorcode.get(err.errno, err.errno))
expect(errno.EIO, lambda: h.pread(4096, %d))
print(hashlib.sha256(h.pread(4096, 0)).hexdigest())
h.shutdown()
`, s.uri, badOff)
	out := testutil.Run(t, "/usr/bin/python3", "-c", script)
	want := "EIO\n" + hex.EncodeToString(sum[:]) + "\n"
	if out != want {
		t.Errorf("libnbd saw:\n%s\nwant:\n%s", out, want)
	}
	if st := s.srv.Stats(); st.Errors != 1 {
		t.Errorf("server counted %d read errors, want 1", st.Errors)
	}
}

// TestReadsInFlight: a read held up at the registry shows in Stats as in
// flight, with its age, until it is answered.
func TestReadsInFlight(t *testing.T) {
	testutil.Require(t, false, "/usr/bin/python3")
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s := serve(t, func(host string) string {
		return testutil.FaultProxy(t, host, func(_ int64, r *http.Request) testutil.Fault {
			if r.Header.Get("Range") != "" {
				once.Do(func() { close(arrived) })
				<-release
			}
			return testutil.Pass
		})
	})
	if st := s.srv.Stats(); st.InFlight != 0 || st.Oldest != 0 {
		t.Fatalf("before any read: %+v", st)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", fmt.Sprintf(`
import nbd
h = nbd.NBD()
h.connect_uri(%q)
h.pread(4096, 0)
h.shutdown()
`, s.uri))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	<-arrived
	st := s.srv.Stats()
	close(release)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the held read: %v", err)
	}
	if st.InFlight != 1 || st.Oldest <= 0 || st.Stuck != 0 {
		t.Errorf("while the registry held the read: %+v, want one read in flight, not stuck", st)
	}
	if st := s.srv.Stats(); st.InFlight != 0 || st.Oldest != 0 || st.Bytes != 4096 {
		t.Errorf("after it was answered: %+v", st)
	}
}

func runOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// storedChunk returns the first chunk after chunk 0 that has stored bytes
// (not a hole, not a duplicate of chunk 0), the blob it is in and its
// offset there.
func storedChunk(im *fetcher.Image) (k int, blob string, off uint64) {
	x := im.Index()
	for k := 1; k < len(x.Chunks); k++ {
		c := x.Chunks[k]
		if c.Length != 0 && (c.Blob != x.Chunks[0].Blob || c.Offset != x.Chunks[0].Offset) {
			return k, x.Blobs[c.Blob].Digest.String(), c.Offset
		}
	}
	panic("image has no second stored chunk")
}

// rangeMatch picks out the range requests for one stored chunk, once the
// test knows which (set).
type rangeMatch struct {
	blob atomic.Pointer[string]
	off  atomic.Uint64
}

func (m *rangeMatch) set(blob string, off uint64) { m.off.Store(off); m.blob.Store(&blob) }

// matches reports whether r asks for the chunk's bytes.
func (m *rangeMatch) matches(r *http.Request) bool {
	blob := m.blob.Load()
	var from, to uint64
	if blob == nil || !strings.HasSuffix(r.URL.Path, *blob) {
		return false
	}
	_, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &from, &to)
	return err == nil && from <= m.off.Load() && m.off.Load() <= to
}
