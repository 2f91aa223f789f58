package fetcherd

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/mounts"
)

// FuzzRequests feeds arbitrary wire bytes to the validation of the gRPC
// requests a peer sends (Mount, ReportFallback): no panic, and a Mount
// request that passes names an absolute, clean directory that exists and
// values within their bounds.
func FuzzRequests(f *testing.F) {
	dir := f.TempDir()
	seed := func(m proto.Message) {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	seed(&fetcherv1.MountRequest{Ref: "registry.local/app:v1", Dir: dir})
	seed(&fetcherv1.MountRequest{Ref: "127.0.0.1:5000/a:b", Dir: dir, Attach: "nbdfuse", Connections: 64, IoTimeoutMs: 1000, Options: "dev,suid"})
	seed(&fetcherv1.MountRequest{Ref: "oci:/x", Dir: dir + "/../" + filepath.Base(dir), IndexDigest: "sha256:00", IndexSize: -1, Options: "rw"})
	seed(&fetcherv1.Fallback{Layer: "sha256:abc", Reason: "labels", Message: "m"})
	s := &Server{Mounts: &mounts.Manager{Root: f.TempDir()}, Defaults: Defaults{Attach: "auto", Connections: 4, IOTimeout: 30 * time.Second}}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m fetcherv1.MountRequest
		if proto.Unmarshal(b, &m) == nil {
			if req, err := s.mountRequest(&m); err == nil {
				if !filepath.IsAbs(req.Dir) || filepath.Clean(req.Dir) != req.Dir || req.Connections < 1 || req.Connections > 64 ||
					req.IOTimeout < time.Second {
					t.Fatalf("accepted %+v", req)
				}
			}
		}
		var fb fetcherv1.Fallback
		if proto.Unmarshal(b, &fb) == nil {
			s.ReportFallback(context.Background(), &fb)
			kept := s.latestFallbacks()
			if len(kept) > keptFallbacks {
				t.Fatalf("the daemon keeps %d fallbacks", len(kept))
			}
			for _, k := range kept {
				if len(k.Message) > 2048+len("…") || len(k.Ref) > 512+len("…") {
					t.Fatalf("a fallback kept unbounded: %d bytes of message", len(k.Message))
				}
			}
		}
	})
}
