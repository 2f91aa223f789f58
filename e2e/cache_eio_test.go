package e2e

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// TestCacheVolumeEIO: a cache volume that starts answering every read and
// write with EIO under a live mount never fails a read. In a QEMU guest
// (the host has no device-mapper): the only cache stripe is ext4 on a
// device-mapper linear device, a file is read and cached, then the
// device's table is swapped for dm "error"; with the page cache dropped,
// the cached file and files not yet read all read exactly, fetched again,
// and the condition is logged once (the volume fails some writes and
// takes others in the page cache: that must not flap the log).
func TestCacheVolumeEIO(t *testing.T) {
	testutil.RequireVM(t)
	testutil.Require(t, true, "dmsetup", "mkfs.ext4")
	host := testutil.GGCRRegistry(t)
	_, image := testutil.BlockImage(t, host+"/eio/img:v1", 8<<20)
	want := testutil.SnapshotErofs(t, bytes.NewReader(image))
	port := host[strings.LastIndex(host, ":")+1:]
	script := fmt.Sprintf(`
dd if=/dev/zero of=/tmp/vol bs=1M count=64 2>/dev/null
losetup /dev/loop0 /tmp/vol || exit 1
n=$(( $(stat -c %%s /tmp/vol) / 512 ))
/usr/sbin/dmsetup create vol --table "0 $n linear /dev/loop0 0" || exit 1
/usr/sbin/dmsetup mknodes
/usr/sbin/mkfs.ext4 -q /dev/mapper/vol || exit 1
mkdir -p /cache && mount -t ext4 /dev/mapper/vol /cache || exit 1
/lazyblk mount --plain-http --cache-dir /cache --fill-below 0 --no-trace 10.0.2.2:%s/eio/img:v1 /mnt || exit 1
sha256sum /mnt/text.txt | sed 's/^/BEFORE /'
/usr/sbin/dmsetup suspend vol && /usr/sbin/dmsetup reload vol --table "0 $n error" && /usr/sbin/dmsetup resume vol || exit 1
echo 3 > /proc/sys/vm/drop_caches
cat /cache/chunks/*/* > /dev/null 2>&1 && echo CACHE-STILL-READS
cd /mnt && sha256sum text.txt random.bin small | sed 's/^/AFTER /' && cd /
grep -c "the chunk cache cannot" /run/lazyblk/mounts/*/serve.log | sed 's/^/LOGGED /'
/lazyblk umount /mnt
`, port)
	out := testutil.Guest{
		Files:    map[string]string{"/lazyblk": staticLazyblk(t)},
		Binaries: []string{"/usr/sbin/dmsetup", "/usr/sbin/mkfs.ext4"},
		Modules:  []string{"failover", "net_failover", "virtio_net", "libcrc32c", "erofs", "nbd nbds_max=0", "loop", "dm-mod"},
		Script:   script,
	}.Boot(t, 4*time.Minute)
	if !strings.Contains(out, "GUEST-EXIT 0") {
		t.Fatalf("the guest script failed:\n%s", out)
	}
	if strings.Contains(out, "CACHE-STILL-READS") {
		t.Fatalf("the cache volume still reads after its table became dm error:\n%s", out)
	}
	sums := map[string]string{}
	for _, m := range regexp.MustCompile(`(BEFORE|AFTER) ([0-9a-f]{64})  (\S+)`).FindAllStringSubmatch(out, -1) {
		sums[m[1]+" "+strings.TrimPrefix(m[3], "/mnt/")] = m[2]
	}
	for key, path := range map[string]string{"BEFORE text.txt": "text.txt", "AFTER text.txt": "text.txt",
		"AFTER random.bin": "random.bin", "AFTER small": "small"} {
		if got := sums[key]; got != want[path].Digest {
			t.Errorf("%s: sha256 %q, want %s", key, got, want[path].Digest)
		}
	}
	if !strings.Contains(out, "LOGGED 1") {
		t.Errorf("the failing cache was not logged exactly once:\n%s", out)
	}
	if t.Failed() {
		t.Logf("console:\n%s", out)
	}
}
