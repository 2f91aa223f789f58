package snapshotter

import (
	"context"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestSnapshotterSuite runs containerd's own snapshotter conformance
// suite: ordinary layers must behave exactly like overlayfs. It mounts,
// so it needs root. The suite's name argument selects what it expects of
// the kind of snapshotter: "overlayfs" expects renaming a directory of a
// lower layer to fail with EXDEV (no redirect_dir), as on every
// overlayfs-based snapshotter, which this is.
func TestSnapshotterSuite(t *testing.T) {
	testutil.Require(t, true)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := New(ctx, root, nil)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}
