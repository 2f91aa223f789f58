package e2e

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// ublkGuest boots Debian's 6.12 kernel with ublk_drv (no nbd driver, so
// auto must take ublk) and runs script against an image of the registry
// reachable at 10.0.2.2:$PORT, behind a hold proxy whose control URL is
// $CTL. It returns the console and the reference flattening.
func ublkGuest(t *testing.T, script string, timeout time.Duration) (string, testutil.Tree) {
	t.Helper()
	testutil.RequireVM(t)
	host := testutil.GGCRRegistry(t)
	_, image := testutil.BlockImage(t, host+"/vm/img:v1", 8<<20)
	want := testutil.SnapshotErofs(t, bytes.NewReader(image))
	port := newHoldProxy(t, host)
	port = port[strings.LastIndex(port, ":")+1:]
	out := testutil.Guest{
		Files:   map[string]string{"/lazyblk": staticLazyblk(t)},
		Modules: []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "ublk_drv"},
		Script: fmt.Sprintf("PORT=%s\nREF=10.0.2.2:%s/vm/img:v1\nCTL=http://10.0.2.2:%s/ctl/\n", port, port, port) +
			script,
	}.Boot(t, timeout)
	if !strings.Contains(out, "GUEST-EXIT 0") {
		t.Fatalf("the guest script failed; console:\n%s", out)
	}
	return out, want
}

// guestTree parses the "TREE type mode size digest path" lines the guest
// prints for every path under /mnt.
func guestTree(out string) testutil.Tree {
	got := testutil.Tree{}
	for _, m := range regexp.MustCompile(`(?m)^TREE (\S+) ([0-7]+) (\d+) (\S+) /mnt/(.+)$`).FindAllStringSubmatch(out, -1) {
		mode, _ := strconv.ParseUint(m[2], 8, 32)
		size, _ := strconv.ParseInt(m[3], 10, 64)
		meta := testutil.Meta{Type: m[1], Mode: uint32(mode)}
		if m[1] == "file" {
			meta.Size, meta.Digest = size, m[4]
		}
		got[m[5]] = meta
	}
	return got
}

// treeScript prints a TREE line per path under /mnt.
const treeScript = `
find /mnt -mindepth 1 | while read p; do
  if [ -f "$p" ]; then echo "TREE file $(stat -c '%a %s' "$p") $(sha256sum < "$p" | cut -d' ' -f1) $p"
  elif [ -d "$p" ]; then echo "TREE dir $(stat -c %a "$p") 0 - $p"
  else echo "TREE other $(stat -c %a "$p") 0 - $p"; fi
done
`

// compareTree checks the guest's tree against the reference flattening
// on what busybox can print: the paths, types, permission bits, sizes
// and contents.
func compareTree(t *testing.T, want, got testutil.Tree) {
	t.Helper()
	if len(got) == 0 {
		t.Fatal("the guest listed no files")
	}
	for p, w := range want {
		g, ok := got[p]
		typ := map[string]string{"file": "file", "dir": "dir"}[w.Type]
		if typ == "" {
			typ = "other"
		}
		switch {
		case !ok:
			t.Errorf("%s: missing in the guest's mount", p)
		case g.Type != typ || g.Mode != w.Mode&0o7777 || typ == "file" && (g.Size != w.Size || g.Digest != w.Digest):
			t.Errorf("%s: guest has %s, want %s", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: in the guest's mount, not in the image", p)
		}
	}
}

// TestUblkMount boots Debian's 6.12 kernel, whose ublk_drv is the only
// block driver lazyblk can use there, and mounts an image with --attach
// auto: it takes ublk, and the tree read through /dev/ublkbN equals the
// reference flattening. A write to the read-only device fails and the
// device goes on serving; status shows the device's reads.
func TestUblkMount(t *testing.T) {
	out, want := ublkGuest(t, `
/lazyblk mount --plain-http $REF /mnt | sed 's/^/MOUNTED /'
grep ' /mnt ' /proc/mounts | sed 's/^/MOUNTS /'
`+treeScript+`
dd if=/dev/zero of=$(sed -n 's/^\/dev\/\(ublkb[0-9]*\) .*/\/dev\/\1/p' /proc/mounts) bs=4096 count=1 oflag=direct 2>/dev/null && echo WRITE-ACCEPTED || echo WRITE-REFUSED
cat /mnt/small | sed 's/^/AFTER-WRITE /'
/lazyblk --log-level info fetcher 2>/tmp/f.log &
fpid=$!
until grep -q "listening on" /tmp/f.log; do sleep 0.1; done
/lazyblk status --json | tr -d '\n ' | sed 's/^/STATUS /'; echo
/lazyblk status | sed 's/^/TABLE /'
kill $fpid
/lazyblk umount /mnt
ls /dev | grep ublkb | sed 's/^/LEFT /' || true
`, 5*time.Minute)
	if !regexp.MustCompile(`MOUNTS /dev/ublkb\d+ /mnt erofs ro`).MatchString(out) || !strings.Contains(out, "via ublk") {
		t.Errorf("auto did not mount through ublk; console:\n%s", out)
	}
	compareTree(t, want, guestTree(out))
	if !strings.Contains(out, "WRITE-REFUSED") || !strings.Contains(out, "AFTER-WRITE small") {
		t.Errorf("a write to the read-only device was not refused, or the device stopped serving; console:\n%s", out)
	}
	if !regexp.MustCompile(`STATUS .*"attach":"ublk".*"requests":[1-9]`).MatchString(out) {
		t.Errorf("status does not show the ublk device's reads; console:\n%s", out)
	}
	if strings.Contains(out, "LEFT ") {
		t.Errorf("umount left a ublk device behind; console:\n%s", out)
	}
}
