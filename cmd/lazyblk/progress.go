package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// meter redraws one progress line in place on a terminal until stop; on
// anything else (a file, a pipe) or when off (--json) it draws nothing.
type meter struct {
	w     io.Writer
	read  func() (label string, done, total int64) // total 0: unknown
	begun time.Time
	quit  chan struct{}
	ended chan struct{}
}

// meterEvery is how often a meter redraws.
const meterEvery = 200 * time.Millisecond

func startMeter(w io.Writer, on bool, read func() (label string, done, total int64)) *meter {
	m := &meter{w: w, read: read, begun: time.Now(), quit: make(chan struct{}), ended: make(chan struct{})}
	if !on || !isTerminal(w) {
		close(m.ended)
		return m
	}
	go func() {
		defer close(m.ended)
		t := time.NewTicker(meterEvery)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				m.draw()
			case <-m.quit:
				m.draw()
				fmt.Fprintln(m.w)
				return
			}
		}
	}()
	return m
}

// stop draws the last state and ends the line.
func (m *meter) stop() {
	select {
	case <-m.ended:
		return // never drawn
	default:
	}
	close(m.quit)
	<-m.ended
}

func (m *meter) draw() {
	label, done, total := m.read()
	rate := float64(done) / max(time.Since(m.begun).Seconds(), 0.001)
	line := fmt.Sprintf("  %s  %s", label, human(uint64(max(done, 0))))
	if total > 0 {
		const width = 24
		filled := int(min(done, total) * width / total)
		line = fmt.Sprintf("  %s  [%s%s] %s / %s  %3d%%", label, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
			human(uint64(max(done, 0))), human(uint64(total)), min(done, total)*100/total)
	}
	fmt.Fprintf(m.w, "\r%s  %s/s\033[K", line, human(uint64(rate)))
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
