package fetcher_test

import (
	"context"
	"testing"
	"time"
)

// TestIdle: an image is not idle while a fetch is in flight, however long
// ago its read began; once its fetches are done (Close waits for them),
// its idle time counts from the last.
func TestIdle(t *testing.T) {
	im, g, want, data := gatedImage(t, func(data []int) []int { return data[:1] })
	cs := int64(im.Index().ChunkSize)
	p := make([]byte, im.Index().ChunkLen(data[0]))
	read := make(chan error, 1)
	go func() {
		_, err := im.ReadAt(context.Background(), p, int64(data[0])*cs)
		read <- err
	}()
	<-g.held // the fetch waits on the registry
	if d := im.Idle(); d != 0 {
		t.Errorf("Idle() = %v while a fetch is in flight; want 0", d)
	}
	g.open()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if string(p) != string(want[int64(data[0])*cs:int64(data[0])*cs+int64(len(p))]) {
		t.Fatal("wrong bytes")
	}
	im.Close()
	if d := im.Idle(); d <= 0 || d > time.Minute {
		t.Errorf("Idle() = %v once the fetches are done; want the little time since", d)
	}
}
