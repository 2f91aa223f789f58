// Package fetcher is the only package that speaks HTTP. It resolves image
// locations — registry references through go-containerregistry (docker
// config.json credentials and helpers, plain HTTP for loopback) or OCI
// image layouts on disk (oci:DIR[:TAG]) — pushes converted images (blobs
// first, tag last), and fetches and verifies chunk indexes.
//
// The lazy read path (ReadAt per image, demand misses, coalescing,
// prefetch and fill, the one model of time) is the fetcher/cache issue's
// work and will live here.
package fetcher
