package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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
func ublkGuest(t *testing.T, script string, timeout time.Duration) (string, testutil.Tree, []byte) {
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
	return out, want, image
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
// device goes on serving; the queues' buffers, touched by 16 reads at
// once, are given back after the queues sit idle; status shows the
// device's reads.
func TestUblkMount(t *testing.T) {
	out, want, _ := ublkGuest(t, `
/lazyblk mount --plain-http $REF /mnt | sed 's/^/MOUNTED /'
grep ' /mnt ' /proc/mounts | sed 's/^/MOUNTS /'
`+ublkDev+treeScript+`
dd if=/dev/zero of=$DEV bs=4096 count=1 oflag=direct 2>/dev/null && echo WRITE-ACCEPTED || echo WRITE-REFUSED
cat /mnt/small | sed 's/^/AFTER-WRITE /'
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
bufrss() { awk '/^[0-9a-f]+-[0-9a-f]+ /{sz=0} /^Size:/{sz=$2} /^Rss:/{if(sz==16388) t+=$2} END{print t+0}' /proc/$pid/smaps; }
for i in $(seq 0 15); do dd if=$DEV of=/dev/null bs=256k skip=$i count=1 iflag=direct 2>/dev/null & done; wait
echo "BUFRSS-BUSY $(bufrss)"
n=0; while [ $(bufrss) -gt 8 ] && [ $n -lt 40 ]; do sleep 1; n=$((n+1)); done
echo "BUFRSS-IDLE $(bufrss) after ${n}s"
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
	busy := regexp.MustCompile(`BUFRSS-BUSY (\d+)`).FindStringSubmatch(out)
	idle := regexp.MustCompile(`BUFRSS-IDLE (\d+)`).FindStringSubmatch(out)
	if busy != nil && idle != nil {
		t.Logf("ublk buffers resident: %s KiB after 16 reads, %s", busy[1], idle[0])
	}
	if busy == nil || idle == nil || busy[1] == "0" || len(idle[1]) > 1 {
		t.Errorf("the queues' buffers did not give their memory back when idle (resident KiB busy %v, idle %v); console:\n%s", busy, idle, out)
	}
	if !regexp.MustCompile(`STATUS .*"attach":"ublk".*"requests":[1-9]`).MatchString(out) {
		t.Errorf("status does not show the ublk device's reads; console:\n%s", out)
	}
	if strings.Contains(out, "LEFT ") {
		t.Errorf("umount left a ublk device behind; console:\n%s", out)
	}
}

// ublkDev finds the mounted ublk device in the guest.
const ublkDev = `DEV=$(sed -n 's/^\/dev\/\(ublkb[0-9]*\) .*/\/dev\/\1/p' /proc/mounts)
`

// readRange reads LEN bytes at OFF of the device with direct I/O in
// blocks of BS (all in KiB), pinned to CPU, and prints "RANGE TAG OFF
// LEN sha256".
const readRange = `readrange() { # tag cpu off_kib len_kib bs_kib
  taskset -c $2 dd if=$DEV bs=$5k skip=$(($3 * 1024)) count=$(($4 / $5)) iflag=direct,skip_bytes 2>/dev/null | sha256sum | sed "s/ .*//; s/^/RANGE $1 $3 $4 /"
}
`

// TestUblkReadersFaultsRecovery runs the failure behaviour of the NBD
// path on a ublk device in the 6.12 guest: 16 readers on both CPUs (so
// both hardware queues, each counted in status) read exact bytes
// with direct I/O; a read whose fetch fails (the registry answers 503
// until the read deadline) gets EIO and the same read works once the
// registry heals; with a read provably waiting on the registry the
// serving process is killed with SIGKILL, lazyblk reattach recovers the
// device and the read in flight completes with the right bytes; killed
// again with a read queued, a fetcher daemon that starts recovers it and
// the read completes; with a file read stuck on the registry, umount
// refuses (busy) and umount --force detaches, the read fails, and nothing
// is left: no ublk device, character device, process or mount.
func TestUblkReadersFaultsRecovery(t *testing.T) {
	type rng struct{ tag, cpu, off, n, bs int } // KiB
	var readers []rng
	for i := range 16 {
		bs := []int{4, 64, 256, 1024}[i%4]
		readers = append(readers, rng{i, i % 2, 512 + i*256, max(bs, 256), bs})
	}
	var script strings.Builder
	script.WriteString(`/lazyblk mount --plain-http --fill-below 0 --attempt-timeout 1s --read-timeout 10s $REF /mnt | sed 's/^/MOUNTED /'
` + ublkDev + readRange + `
wget -q -O /dev/null ${CTL}fail
readrange FAULT 0 6144 64 64
wget -q -O /dev/null ${CTL}heal
readrange HEALED 0 6144 64 64
`)
	for _, r := range readers {
		fmt.Fprintf(&script, "readrange R%d %d %d %d %d > /tmp/r%d &\n", r.tag, r.cpu, r.off, r.n, r.bs, r.tag)
	}
	script.WriteString(`wait
cat /tmp/r*
/lazyblk --log-level info fetcher 2>/tmp/f.log &
fpid=$!
until grep -q "listening on" /tmp/f.log; do sleep 0.1; done
/lazyblk status --json | tr -d '\n ' | sed 's/^/STATUS /'; echo
kill $fpid; wait $fpid
wget -q -O /dev/null ${CTL}hold
readrange INFLIGHT 1 7168 256 256 > /tmp/inflight &
reader=$!
wget -q -O /dev/null ${CTL}held
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
kill -9 $pid
wget -q -O /dev/null ${CTL}release
/lazyblk reattach /mnt | sed 's/^/REATTACHED /'
wait $reader
cat /tmp/inflight
readrange AFTER 0 8192 128 128
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
kill -9 $pid
readrange RECOVER 1 9216 256 256 > /tmp/recover &
reader=$!
/lazyblk --log-level info fetcher 2>/tmp/f2.log &
fpid=$!
until grep -q "listening on" /tmp/f2.log; do sleep 0.1; done
wait $reader
cat /tmp/recover
grep -q "recover: reattached" /tmp/f2.log && echo RECOVERED-BY-DAEMON
kill $fpid; wait $fpid
/lazyblk umount /mnt
# Again with the default deadlines, so a read held at the registry stays in flight.
/lazyblk mount --plain-http --fill-below 0 $REF /mnt > /dev/null
wget -q -O /dev/null ${CTL}hold
(cat /mnt/random.bin > /dev/null 2>/tmp/stuck.err && echo "STUCK-READ ok" || echo "STUCK-READ failed $(cat /tmp/stuck.err)") > /tmp/stuck &
reader=$!
wget -q -O /dev/null ${CTL}held
/lazyblk --log-level info fetcher 2>/tmp/f3.log &
fpid=$!
until grep -q "listening on" /tmp/f3.log; do sleep 0.1; done
n=0 # the held fetch may be readahead: wait for the reader's own read to reach it
while /lazyblk status --json | tr -d '\n ' > /tmp/held.json; ! grep -q '"reads_in_flight":[1-9].*"oldest_read_ms":[1-9]' /tmp/held.json && [ $n -lt 150 ]; do sleep 0.2; n=$((n+1)); done
sed 's/^/HELD-STATUS /' /tmp/held.json; echo
kill $fpid; wait $fpid
/lazyblk umount /mnt 2>&1 | sed 's/^/BUSY /'
/lazyblk umount --force /mnt && echo FORCED
wait $reader
cat /tmp/stuck
wget -q -O /dev/null ${CTL}release
(ls /sys/block; ls /dev) | grep ublk | grep -v ublk-control | sed 's/^/LEFT /' || true
ps | grep '[l]azyblk' | sed 's/^/PROC /' || true
grep -c ' /mnt ' /proc/mounts | sed 's/^/STILL-MOUNTED /' || true
`)
	out, _, image := ublkGuest(t, script.String(), 5*time.Minute)
	fail := func(format string, args ...any) { t.Errorf(format+"; console:\n%s", append(args, out)...) }

	sums := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^RANGE (\S+) (\d+) (\d+) ([0-9a-f]{64})$`).FindAllStringSubmatch(out, -1) {
		sums[m[1]] = m[4]
		if m[1] == "FAULT" {
			continue
		}
		off, _ := strconv.Atoi(m[2])
		n, _ := strconv.Atoi(m[3])
		if want := sha256Hex(image[off<<10 : (off+n)<<10]); m[4] != want {
			t.Errorf("%s: read %d KiB at %d KiB: sha256 %s, want %s", m[1], n, off, m[4], want)
		}
	}
	empty := sha256Hex(nil)
	if sums["FAULT"] != empty {
		fail("a read whose fetch failed returned data (sha256 %s), want EIO and nothing", sums["FAULT"])
	}
	for _, tag := range []string{"HEALED", "INFLIGHT", "AFTER", "RECOVER"} {
		if sums[tag] == "" || sums[tag] == empty {
			fail("%s: no bytes read", tag)
		}
	}
	for _, r := range readers {
		if tag := fmt.Sprintf("R%d", r.tag); sums[tag] == "" || sums[tag] == empty {
			fail("%s: no bytes read", tag)
		}
	}
	if m := regexp.MustCompile(`STATUS .*"queue_requests":\["?(\d+)"?,"?(\d+)"?\]`).FindStringSubmatch(out); m == nil || m[1] == "0" || m[2] == "0" {
		fail("readers on both CPUs did not use both hardware queues (status: requests per queue %v)", m)
	}
	if !strings.Contains(out, "REATTACHED reattached /dev/ublkb") {
		fail("lazyblk reattach did not recover the ublk device")
	}
	if !strings.Contains(out, "RECOVERED-BY-DAEMON") {
		fail("a fetcher daemon started after the serving process died did not recover the ublk device")
	}
	if !regexp.MustCompile(`HELD-STATUS .*"reads_in_flight":[1-9].*"oldest_read_ms":"?[1-9]`).MatchString(out) {
		fail("status did not show the ublk read held at the registry as in flight")
	}
	if !strings.Contains(out, "BUSY ") || !strings.Contains(out, "FORCED") || !strings.Contains(out, "STUCK-READ failed") {
		fail("with a reader stuck on the registry, umount did not refuse, or umount --force did not detach and fail the read")
	}
	if strings.Contains(out, "LEFT ") || strings.Contains(out, "PROC ") || !strings.Contains(out, "STILL-MOUNTED 0") {
		fail("umount left a device, a process or a mount behind")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestUblkCycles mounts and unmounts an image through ublk 100 times in
// the 6.12 guest, reading a file each time, then mounts once more and
// kills the serving process with SIGKILL before lazyblk umount: nothing
// is left behind — no /dev/ublkb*, no /dev/ublkc*, no lazyblk process,
// no mount, no mount state.
func TestUblkCycles(t *testing.T) {
	out, _, _ := ublkGuest(t, `
i=0
while [ $i -lt 100 ]; do
  /lazyblk mount --plain-http --attach ublk $REF /mnt >/dev/null || { echo "CYCLE-FAIL mount $i"; break; }
  [ "$(cat /mnt/small)" = small ] || echo "CYCLE-FAIL read $i"
  /lazyblk umount /mnt || { echo "CYCLE-FAIL umount $i"; break; }
  i=$((i+1))
done
echo "CYCLES $i"
/lazyblk mount --plain-http --attach ublk $REF /mnt >/dev/null
kill -9 $(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' /run/lazyblk/mounts/*/state.json)
/lazyblk umount /mnt && echo UMOUNT-AFTER-KILL
(ls /sys/block; ls /dev) | grep ublk | grep -v ublk-control | sed 's/^/LEFT /' || true
ps | grep '[l]azyblk' | sed 's/^/PROC /' || true
grep -c ' /mnt ' /proc/mounts | sed 's/^/STILL-MOUNTED /' || true
ls /run/lazyblk/mounts 2>/dev/null | sed 's/^/STATE /' || true
`, 10*time.Minute)
	if strings.Contains(out, "CYCLE-FAIL") || !strings.Contains(out, "CYCLES 100") {
		t.Errorf("100 mount/umount cycles did not all succeed; console:\n%s", out)
	}
	if !strings.Contains(out, "UMOUNT-AFTER-KILL") {
		t.Errorf("umount failed after the serving process was killed; console:\n%s", out)
	}
	if strings.Contains(out, "LEFT ") || strings.Contains(out, "PROC ") || strings.Contains(out, "STATE ") || !strings.Contains(out, "STILL-MOUNTED 0") {
		t.Errorf("something was left behind; console:\n%s", out)
	}
}
