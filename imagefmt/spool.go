package imagefmt

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// spoolBlock is the granularity at which runs of zeros are skipped rather
// than written, so a sparse file of many GiB costs no disk in the spool.
const spoolBlock = 64 << 10

// spool holds the content of every regular file met in the layers, so the
// filesystem writer can read each file once at the end. It is a sparse
// temporary file, removed on close.
type spool struct {
	f    *os.File
	size int64
	buf  []byte
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
