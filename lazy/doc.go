// Package lazy is lazyblk for embedders: serverless platforms and VMMs
// that start sandboxes from lazily fetched block images inside their own
// process, without the CLI or the fetcher daemon.
//
// Vocabulary: an Image is a converted block image (lazyblk convert) in a
// registry or an OCI layout, opened by reference: its chunk index is
// fetched (kilobytes), its chunks are not. Reads fetch, verify and cache
// chunks on demand; the cache, when one is given, is the node's, shared
// with every process that names the same directories.
//
// Lifecycle:
//
//	img, err := lazy.Open(ctx, "registry.example.com/app:v1-lazyblk", lazy.WithCache(dirs, size))
//	defer img.Close()
//	img.Warm(ctx, false, nil)      // before a request lands: the start-up's chunks
//	img.Serve(ctx, listener)       // an NBD export: QEMU, Firecracker hosts, nbd-client
//	m, err := img.Mount(ctx, dir, lazy.AttachAuto)  // or a read-only mount here
//	defer m.Close()
//
// Everything takes a context first; Close waits for what the image
// started. The CLI's serve and prefetch warm commands are built on this
// package.
package lazy
