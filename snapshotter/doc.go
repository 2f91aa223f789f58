// Package snapshotter is lazyblk's containerd snapshotter, served to
// containerd as a proxy plugin (lazyblk snapshotter).
//
// Ordinary layers are containerd's own overlayfs snapshotter, unchanged,
// over a metadata store this package shares with it: they behave exactly
// like the stock overlayfs snapshotter and pass containerd's
// testsuite.SnapshotterSuite.
//
// A lazyblk image's layer is remote. containerd's unpacker calls Prepare
// with the layer's containerd.io/snapshot/* annotations as labels; when
// they name a lazyblk chunk index (containerd.io/snapshot/lazyblk.index,
// .index.size) and the image (containerd.io/snapshot/cri.image-ref, which
// CRI and `lazyblk pull` pass), Prepare
//
//  1. prepares and commits the layer's snapshot under its chain ID
//     (containerd.io/snapshot.ref) with an empty upper directory, marked
//     with LabelRemote;
//  2. asks the fetcher daemon to mount the block image read-only on that
//     snapshot's directory — the directory overlayfs uses as the layer;
//  3. returns ErrAlreadyExists, so containerd skips downloading and
//     unpacking the layer.
//
// Containers on top get overlayfs with the block image as lower layer and
// their own upper and work directories; View gets a read-only bind mount.
// Remove of a remote snapshot unmounts the block image inside the metadata
// transaction that removes it: a failed unmount leaves the snapshot, and a
// failed commit leaves a snapshot without its image, which the next start
// mounts again — so a removed snapshot's directory never has an image on
// it when Cleanup (containerd's) deletes it. A restarted snapshotter
// mounts again whatever remote snapshot lost its block image (after a
// reboot emptied /run).
//
// When the lazy mount cannot be made (the fetcher down, the registry
// unreachable, a corrupt index) Prepare falls back to the ordinary path —
// containerd then downloads and unpacks the layer (the converted image's
// fallback layer) — with a log line and a counter (Stats): a pull a stock
// snapshotter would complete never fails here.
package snapshotter
