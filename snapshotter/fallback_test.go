package snapshotter

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/fetcherd"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/mounts"
)

// TestFallbackReported: a lazyblk layer whose labels lack the image
// reference (CRI with snapshot annotations disabled) falls back to the
// ordinary path, is counted as a misconfiguration, and reaches a real
// fetcher daemon over its gRPC socket, naming the setting to change.
func TestFallbackReported(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "fetcher.sock")
	l, err := fetcherd.Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	g := fetcherd.NewGRPCServer(&fetcherd.Server{Mounts: &mounts.Manager{Root: filepath.Join(dir, "state")}})
	go g.Serve(l)
	t.Cleanup(g.Stop)
	client, cc, err := fetcherd.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	ctx := context.Background()
	s, err := New(ctx, filepath.Join(dir, "root"), client)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	labels := map[string]string{snapshots.LabelSnapshotRef: "sha256:chain", imagefmt.AnnotationIndex: "sha256:" + strings.Repeat("a", 64),
		imagefmt.AnnotationIndexSize: "100"}
	if _, err := s.Prepare(ctx, "extract-1", "", snapshots.WithLabels(labels)); err != nil {
		t.Fatalf("Prepare of a layer without its image reference: %v, want the ordinary path", err)
	}
	if st := s.Stats(); st.Fallbacks != 1 || st.Misconfigured != 1 || st.Remote != 0 {
		t.Errorf("stats %+v, want one misconfigured fallback", st)
	}
	resp, err := client.List(ctx, &fetcherv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Fallbacks) != 1 {
		t.Fatalf("the daemon lists %d fallbacks, want 1", len(resp.Fallbacks))
	}
	f := resp.Fallbacks[0]
	if f.Layer != "sha256:chain" || f.Reason != FallbackLabels || f.Count != 1 || !strings.Contains(f.Message, "disable_snapshot_annotations = false") {
		t.Errorf("fallback %v: want layer sha256:chain, reason labels, the setting named", f)
	}
}
