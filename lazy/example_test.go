package lazy_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/lazyblk/lazyblk/fetcher"
	"github.com/lazyblk/lazyblk/imagefmt"
	"github.com/lazyblk/lazyblk/lazy"
)

// publish converts a small random image and stores it at ref, as
// lazyblk convert would; a platform's images come from its registry.
func publish(ctx context.Context, ref, tmp string) error {
	src, err := random.Image(64<<10, 3)
	if err != nil {
		return err
	}
	res, err := imagefmt.Convert(ctx, src, imagefmt.WithTempDir(tmp))
	if err != nil {
		return err
	}
	defer res.Close()
	loc, err := fetcher.ParseLocation(ref, false)
	if err != nil {
		return err
	}
	return fetcher.Push(ctx, loc, res.Image)
}

// Open an image with a node cache and warm it before a request lands.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "lazy-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ref := "oci:" + filepath.Join(dir, "layout") + ":v1"
	if err := publish(ctx, ref, dir); err != nil {
		log.Fatal(err)
	}

	img, err := lazy.Open(ctx, ref, lazy.WithCache([]string{filepath.Join(dir, "cache")}, 1<<30))
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	fmt.Println("filesystem:", img.FS(), "cached before:", img.Cached() == img.Size())
	rep, err := img.Warm(ctx, true, nil) // every chunk; false: the recorded start-up's
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("cached after warm:", rep.Cached == img.Size())
	// Output:
	// filesystem: erofs cached before: false
	// cached after warm: true
}

// Serve an image over NBD on a unix socket, as a microVM's root disk
// (QEMU: -drive file=nbd+unix:///?socket=PATH,format=raw,readonly=on).
func ExampleImage_Serve() {
	ctx, cancel := context.WithCancel(context.Background())
	dir, err := os.MkdirTemp("", "lazy-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ref := "oci:" + filepath.Join(dir, "layout") + ":v1"
	if err := publish(ctx, ref, dir); err != nil {
		log.Fatal(err)
	}
	img, err := lazy.Open(ctx, ref)
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	sock := filepath.Join(dir, "export.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan error)
	go func() { _, err := img.Serve(ctx, l); served <- err }()

	// An NBD client connects; the server greets it (fixed newstyle).
	conn, err := net.Dial("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	greeting := make([]byte, 16)
	if _, err := io.ReadFull(conn, greeting); err != nil {
		log.Fatal(err)
	}
	conn.Close()
	fmt.Printf("%s\n", greeting)
	cancel()
	fmt.Println("served:", <-served)
	// Output:
	// NBDMAGICIHAVEOPT
	// served: <nil>
}
