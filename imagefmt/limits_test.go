package imagefmt

import (
	"archive/tar"
	"errors"
	"testing"
)

// TestErofsTooBig: a tree past erofs's 32-bit block addresses is refused
// before anything is written (the file's bytes are never read here).
func TestErofsTooBig(t *testing.T) {
	tr := newTree(nil)
	tr.root.children["huge"] = &node{name: "huge", ino: &inode{typ: tar.TypeReg, mode: 0o644, size: 17 << 40}}
	err := writeErofs(tr, nil, nil)
	if !errors.Is(err, ErrTooBig) {
		t.Fatalf("got %v, want ErrTooBig", err)
	}
	tr.root.children["huge"].ino.size = 1 << 40
	if err := checkErofsLimits(tr); err != nil {
		t.Errorf("1 TiB refused: %v", err)
	}
}
