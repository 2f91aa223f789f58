package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

const raid0Script = "../scripts/setup-raid0.sh"

// TestSetupRAID0DryRun: against two empty loop devices the dry run prints
// the plan and changes nothing; a device holding a filesystem is refused
// before anything is touched. (The host has no md driver: the real run is
// TestSetupRAID0InGuest.)
func TestSetupRAID0DryRun(t *testing.T) {
	testutil.Require(t, true, "losetup", "blkid", "mkfs.ext4")
	var devs []string
	for i := range 2 {
		img := filepath.Join(t.TempDir(), fmt.Sprintf("disk%d.img", i))
		if err := os.Truncate(createFile(t, img), 64<<20); err != nil {
			t.Fatal(err)
		}
		dev := strings.TrimSpace(testutil.Run(t, "losetup", "--find", "--show", img))
		t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
		devs = append(devs, dev)
	}
	empty := func(dev string) bool {
		out, _ := exec.Command("blkid", "-p", dev).Output()
		return len(out) == 0
	}
	out, err := exec.Command(raid0Script, append([]string{"--dry-run", "--mount", "/srv/cache"}, devs...)...).CombinedOutput()
	plan := "--raid-devices=2 " + devs[0] + " " + devs[1]
	if err != nil || !strings.Contains(string(out), plan) || !strings.Contains(string(out), "nothing was changed") ||
		!strings.Contains(string(out), `dirs = ["/srv/cache"]`) {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if !empty(devs[0]) || !empty(devs[1]) {
		t.Fatal("the dry run wrote to a device")
	}

	testutil.Run(t, "mkfs.ext4", "-q", devs[1])
	for _, dry := range []bool{true, false} {
		args := devs
		if dry {
			args = append([]string{"--dry-run"}, devs...)
		}
		cmd := exec.Command(raid0Script, args...)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState.ExitCode() != 3 || !strings.Contains(string(out), "REFUSING to touch "+devs[1]) ||
			!strings.Contains(string(out), `TYPE="ext4"`) || strings.Contains(string(out), "plan:") {
			t.Errorf("a device with a filesystem (dry run %v): %v\n%s", dry, err, out)
		}
	}
	if !empty(devs[0]) {
		t.Error("the refused run wrote to the other device")
	}
}

// TestSetupRAID0InGuest runs the script for real in the QEMU guest (its
// kernel has md and raid0) over two virtual disks, fills a cache on the
// array through lazyblk, and checks that a second run refuses the disks.
func TestSetupRAID0InGuest(t *testing.T) {
	testutil.RequireVM(t)
	testutil.Require(t, true, "/usr/sbin/mdadm", "/usr/sbin/mkfs.ext4")
	host := testutil.GGCRRegistry(t)
	_, image := testutil.BlockImage(t, host+"/raid/img:v1", 4<<20)
	port := host[strings.LastIndex(host, ":")+1:]
	var disks []string
	for i := range 2 {
		d := filepath.Join(t.TempDir(), fmt.Sprintf("vd%d.img", i))
		if err := os.Truncate(createFile(t, d), 128<<20); err != nil {
			t.Fatal(err)
		}
		disks = append(disks, d)
	}
	script := fmt.Sprintf(`
export PATH=/usr/sbin:/usr/bin:/bin
mkdir -p /etc
sh /setup-raid0.sh --mount /cache /dev/vda /dev/vdb
grep '^md0' /proc/mdstat | sed 's/^/MDSTAT /'
grep ' /cache ' /proc/mounts | sed 's/^/MOUNT /'
/lazyblk cat --plain-http --cache-dir /cache/lazyblk 10.0.2.2:%s/raid/img:v1 | sha256sum | sed 's/^/CAT /'
echo "STATS $(/lazyblk cache stats --json --cache-dir /cache/lazyblk | tr -d ' \n')"
sh /setup-raid0.sh --md /dev/md1 /dev/vda /dev/vdb 2>&1 | sed 's/^/AGAIN /' || true
`, port)
	out := testutil.Guest{
		Files:    map[string]string{"/lazyblk": staticLazyblk(t), "/setup-raid0.sh": raid0Script, "/etc/mke2fs.conf": "/etc/mke2fs.conf"},
		Binaries: []string{"/usr/sbin/mdadm", "/usr/sbin/mkfs.ext4"},
		Modules:  []string{"failover", "net_failover", "virtio_net", "virtio_blk", "md-mod", "raid0"},
		Disks:    disks,
		Script:   script,
	}.Boot(t, 5*time.Minute)
	if !strings.Contains(out, "GUEST-EXIT 0") {
		t.Fatalf("the guest script failed; console:\n%s", out)
	}
	sum := sha256.Sum256(image)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`MDSTAT md0 : active raid0 vd[ab]\[\d\] vd[ab]\[\d\]`),
		regexp.MustCompile(`MOUNT /dev/md0 /cache ext4 `),
		regexp.MustCompile(`CAT ` + hex.EncodeToString(sum[:])),
		regexp.MustCompile(`STATS \{"dirs":\["/cache/lazyblk"\],"chunks":[1-9]\d*,"bytes":[1-9]\d*`),
		regexp.MustCompile(`AGAIN setup-raid0: REFUSING to touch /dev/vda: it is (part of a running md array|not empty)`),
	} {
		if !want.MatchString(out) {
			t.Errorf("guest output does not match %s", want)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", out)
	}
}

func createFile(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}
