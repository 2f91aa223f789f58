package fetcher

import (
	"fmt"
	"testing"
)

func TestCheckContentRange(t *testing.T) {
	cases := []struct {
		h    string
		off  int64
		n    int
		good bool
	}{
		{"bytes 0-9/100", 0, 10, true},
		{"bytes 10-19/*", 10, 10, true},
		{"bytes 0-9/100", 1, 10, false},
		{"bytes 0-8/100", 0, 10, false},
		{"", 0, 10, false},
		{"items 0-9/100", 0, 10, false},
		{"bytes 0-/100", 0, 10, false},
		{"bytes -9/100", 0, 10, false},
	}
	for _, c := range cases {
		if err := checkContentRange(c.h, c.off, c.n); (err == nil) != c.good {
			t.Errorf("checkContentRange(%q, %d, %d) = %v", c.h, c.off, c.n, err)
		}
	}
}

// FuzzContentRange: any header either matches the asked range exactly or
// is an error; never a panic.
func FuzzContentRange(f *testing.F) {
	f.Add("bytes 0-9/100", int64(0), 10)
	f.Add("bytes 9223372036854775806-9223372036854775807/*", int64(1), 1)
	f.Fuzz(func(t *testing.T, h string, off int64, n int) {
		if n <= 0 || off < 0 || off > 1<<50 || n > 1<<30 {
			return
		}
		if checkContentRange(h, off, n) == nil {
			var a, b int64
			if _, err := fmt.Sscanf(h, "bytes %d-%d", &a, &b); err != nil || a != off || b != off+int64(n)-1 {
				t.Fatalf("accepted %q for %d+%d", h, off, n)
			}
		}
	})
}
