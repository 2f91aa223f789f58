package fetcher

// WithMissHook calls f in a reader's goroutine after it missed chunk i in
// the cache, before it joins a fetch or starts one: tests open the window
// between the two.
func WithMissHook(f func(i int)) Option {
	return func(o *options) error { o.testHookMissed = f; return nil }
}

// WaitSettled returns once no fetch of chunk i is in flight: the one
// there, if any, has cached its chunks or failed.
func WaitSettled(im *Image, i int) {
	im.mu.Lock()
	cl := im.inflight[i]
	im.mu.Unlock()
	if cl != nil {
		<-cl.settled
	}
}
