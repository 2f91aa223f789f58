package mounts

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/lazyblk/lazyblk/fetcher"
)

// idleTrim is how long a serving process's image must have done nothing
// before the process gives its free memory back to the system. Go keeps
// the heap it grew to while reading (pooled run and check buffers,
// garbage not yet collected), and a process that reads nothing runs no
// collection to let it go: a `lazyblk serve` that had served a 520 MiB
// image whole still held 156 MB four minutes later (measured).
const idleTrim = 5 * time.Second

// TrimWhenIdle gives the process's free memory back each time im has been
// idle for idleTrim, until ctx ends: two collections (a pooled buffer
// survives the first) and a release of the freed pages.
func TrimWhenIdle(ctx context.Context, im *fetcher.Image) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	trimmed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if im.Idle() < idleTrim {
			trimmed = false
		} else if !trimmed {
			runtime.GC()
			debug.FreeOSMemory()
			trimmed = true
		}
	}
}
