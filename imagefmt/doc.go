// Package imagefmt is the lazyblk block image format and its converter.
// It never touches the network.
//
// # Vocabulary
//
// A source image's layers are flattened into one read-only filesystem
// image (erofs by default, ext4 on request). The filesystem image is cut
// into chunks of ChunkSize bytes (4 MiB by default; a power of two from
// 64 KiB to 64 MiB, fixed per image; the last chunk may be short). Each
// chunk is stored in the data blob raw or zstd-compressed, or not at all
// when it is all zeros (a hole). The chunk index lists every chunk; the
// manifest names the index by digest, and the index names the data blob by
// digest and every chunk by the sha256 of its uncompressed bytes, so every
// byte a reader serves is verified from the manifest down.
//
// # Chunk index, version 1
//
// Little-endian, a 68-byte header followed by one 48-byte record per chunk:
//
//	offset size  header
//	     0    8  magic "LZBLKIX\0"
//	     8    2  version (1)
//	    10    1  filesystem: 1 erofs, 2 ext4
//	    11    1  log2(chunk size), 16..26
//	    12    4  reserved, zero
//	    16    8  filesystem image size in bytes
//	    24   32  sha256 of the data blob
//	    56    8  data blob size
//	    64    4  chunk count = ceil(image size / chunk size)
//
//	offset size  chunk record
//	     0   32  sha256 of the chunk's uncompressed bytes (zero for a hole)
//	    32    8  offset of the stored bytes in the data blob
//	    40    4  stored length (chunk length when raw, 0 for a hole)
//	    44    1  encoding: 0 hole, 1 raw, 2 zstd
//	    45    3  reserved, zero
//
// Why binary and not JSON: a 50 GB image has 12,800 chunks; fixed records
// keep its index at 600 KB (JSON would be ~2 MB) and let a reader find
// chunk i by arithmetic. Why versioned: a reader rejects a version it does
// not know instead of misreading it. DecodeIndex checks every invariant
// (length matches chunk count, chunk count matches image size, stored
// ranges inside the blob, raw lengths exact) and allocates only what the
// input's length implies; FuzzDecodeIndex holds it to that.
//
// Identical chunks are stored once: two records may name the same range.
// Records are in chunk order; stored bytes are in blob order, which is
// chunk order except for chunk 0, written last (the filesystem writer
// rewrites the superblock at the end, so chunk 0 is held until then).
//
// # Compression
//
// --compression auto (default) stores a chunk as zstd only when that saves
// at least 10% of it: model weights and other high-entropy data stay raw,
// so serving them costs one copy and no CPU. zstd forces zstd; none stores
// everything raw.
//
// # Registry layout
//
// A converted image is an OCI image index with two manifests:
//
//	image index (the tag)
//	├── runnable manifest            platform: the source's (e.g. linux/amd64)
//	│   ├── config                   the source config; rootfs and history describe one layer
//	│   └── layer                    one squashed gzip tar of the flattened tree (the fallback),
//	│                                annotated containerd.io/snapshot/lazyblk.* (below)
//	└── artifact manifest            platform unknown/unknown, artifactType
//	    │                            application/vnd.lazyblk.image.v1, same annotations
//	    ├── config                   application/vnd.oci.empty.v1+json ("{}")
//	    ├── layer 0                  chunk index, application/vnd.lazyblk.index.v1
//	    └── layer 1                  data blob,   application/vnd.lazyblk.data.v1
//
// Annotations (on the fallback layer descriptor, the artifact manifest and
// its index descriptor):
//
//	containerd.io/snapshot/lazyblk.index       digest of the chunk index blob
//	containerd.io/snapshot/lazyblk.index.size  its size in bytes
//	containerd.io/snapshot/lazyblk.fs          erofs | ext4
//	containerd.io/snapshot/lazyblk.image.size  filesystem image size in bytes
//
// This shape meets the four requirements of DESIGN.md:
//  1. Every blob is referenced by a manifest the index holds, so registry
//     garbage collection keeps the index and data blobs.
//  2. Stock containerd and Docker resolve the platform to the runnable
//     manifest (they skip unknown/unknown, as they skip buildx attestation
//     manifests) and unpack the fallback layer. With --no-fallback the
//     runnable manifest's layer is the data blob itself: stock runtimes
//     fail with an unknown media type instead of running a wrong tree.
//  3. The fallback layer's descriptor carries the annotations, so a puller
//     that hands layer annotations to Prepare as labels (lazyblk pull will;
//     containerd keeps only containerd.io/snapshot/* labels on snapshots,
//     hence the prefix) lets the snapshotter find the chunk index; the
//     reference to fetch from comes from CRI's cri.image-ref label or the
//     puller. Confirming stock containerd's unpacker path is part of the
//     snapshotter issue.
//  4. Nothing needs the OCI referrers API: everything hangs off one tag,
//     which docker-registry 2.8 serves.
//
// Pushes write blobs first, child manifests next and the tagged index last,
// so a failed conversion or push never leaves a tag naming a partial image.
//
// # Flattening
//
// Layers are applied in order with the overlay semantics containerd's
// unpack gives (umoci, an independent unpacker, agrees; the tests compare
// against it): .wh.NAME hides NAME of lower layers, .wh..wh..opq hides all
// lower children of its directory, a non-directory replaces whatever was at
// its path, a directory entry over a directory only updates metadata,
// parent components resolve through symlinks inside the root, and
// hardlinks share an inode — a link keeps the content it was made with when
// a later layer replaces the path it named. File contents go to a sparse
// spool file once; the filesystem writer and the fallback tar both read
// them from there.
//
// erofs is written by a vendored go-erofs (third_party/go-erofs, patched
// for hardlinks and zero-copy file data) straight into the chunker: no
// filesystem image file is ever written. ext4 is staged as a directory and
// built by e2fsprogs' mkfs.ext4 -d, the reference populate code for
// xattrs, hardlinks and devices (no maintained pure-Go ext4 writer handles
// them); it needs root.
package imagefmt
