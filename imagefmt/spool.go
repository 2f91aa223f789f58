package imagefmt

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// spoolBlock is the granularity at which runs of zeros are skipped rather
// than written, so a sparse file of many GiB costs no disk in the spool.
const spoolBlock = 64 << 10

// spool holds the content of every regular file met in the layers, so the
// filesystem writer can read each file once at the end. It is a sparse
// temporary file, removed on close.
type spool struct {
	f       *os.File
	size    int64
	buf     []byte // add's
	copyBuf []byte // copyTo's
}

func newSpool(dir string) (*spool, error) {
	f, err := os.CreateTemp(dir, "lazyblk-spool-*")
	if err != nil {
		return nil, fmt.Errorf("imagefmt: create spool: %w", err)
	}
	return &spool{f: f, buf: make([]byte, spoolBlock)}, nil
}

// add copies exactly n bytes of r and returns where they start.
func (s *spool) add(r io.Reader, n int64) (int64, error) {
	start := s.size
	skipped := false // the last block was zeros and not written
	for left := n; left > 0; {
		b := s.buf[:min(int64(len(s.buf)), left)]
		if _, err := io.ReadFull(r, b); err != nil {
			return 0, fmt.Errorf("%w: file content: %v", ErrBadLayer, err)
		}
		if skipped = isZero(b); !skipped {
			if _, err := s.f.WriteAt(b, s.size); err != nil {
				return 0, fmt.Errorf("imagefmt: write spool: %w", err)
			}
		}
		s.size += int64(len(b))
		left -= int64(len(b))
	}
	if skipped { // a trailing hole: extend the file so reads see zeros
		if err := s.f.Truncate(s.size); err != nil {
			return 0, fmt.Errorf("imagefmt: extend spool: %w", err)
		}
	}
	return start, nil
}

// reader returns a reader for n bytes at off.
func (s *spool) reader(off, n int64) *io.SectionReader {
	return io.NewSectionReader(s.f, off, n)
}

func (s *spool) close() error {
	return errors.Join(s.f.Close(), os.Remove(s.f.Name()))
}

// copyTo writes n bytes of the spool at off to k, the holes of the sparse
// spool as zeros that are never read (a 5 GiB file of zeros with three
// words in it costs no reading of 5 GiB).
func (s *spool) copyTo(k *chunker, off, n int64) error {
	if s.copyBuf == nil { // not buf: the fallback writer reads the spool meanwhile
		s.copyBuf = make([]byte, 256<<10)
	}
	for end := off + n; off < end; {
		data, err := s.f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // nothing but a hole to the end
			data = end
		} else if err != nil {
			return fmt.Errorf("imagefmt: spool: %w", err)
		}
		if data > off {
			if err := k.writeZeros(min(data, end) - off); err != nil {
				return err
			}
			off = min(data, end)
			continue
		}
		hole, err := s.f.Seek(off, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("imagefmt: spool: %w", err)
		}
		m := min(hole, end) - off
		if _, err := io.CopyBuffer(onlyWriter{k}, io.NewSectionReader(s.f, off, m), s.copyBuf); err != nil {
			return err
		}
		off += m
	}
	return nil
}
