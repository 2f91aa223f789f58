package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// VMDir is where scripts/vm-kernel.sh unpacks the guest kernel.
func VMDir() string {
	if d := os.Getenv("LAZYBLK_VM_DIR"); d != "" {
		return d
	}
	return "/var/cache/lazyblk/vm"
}

// RequireVM skips (outside CI) or fails (in CI) when the guest kernel or
// QEMU is missing.
func RequireVM(t testing.TB) {
	t.Helper()
	Require(t, true, "qemu-system-x86_64", "busybox", "xz")
	if _, err := os.Stat(filepath.Join(VMDir(), "vmlinuz")); err != nil {
		if InCI() {
			t.Fatalf("CI must run this test but the guest kernel is missing: %v (scripts/vm-kernel.sh)", err)
		}
		t.Skipf("needs the guest kernel: %v (run scripts/vm-kernel.sh)", err)
	}
}

// Guest describes one boot: files copied into the initramfs (guest path ->
// host path), kernel modules to load in order (name -> insmod arguments),
// and the shell script init runs once the network is up.
type Guest struct {
	Files   map[string]string
	Modules []string // "nbd nbds_max=0": name, then parameters
	Script  string
	// Binaries are host programs copied to the same paths in the guest
	// with the shared libraries ldd finds for them.
	Binaries []string
	// Disks are raw image files attached as virtio disks: /dev/vda, vdb…
	Disks []string
	// Drives are further QEMU -drive specifications, after Disks (an NBD
	// export: file=nbd+unix:///?socket=PATH,format=raw,if=virtio).
	Drives []string
	// OnLine, when set, sees each console line as it arrives (timing).
	OnLine func(line string)
}

// Boot runs the guest under QEMU (software emulation on one host thread,
// -cpu max for this kernel; the host's 127.0.0.1 is 10.0.2.2 from inside)
// and returns the console output once the guest powers off. The script's exit status is
// printed as "GUEST-EXIT n".
func (g Guest) Boot(t testing.TB, timeout time.Duration) string {
	t.Helper()
	root := t.TempDir()
	mkdir := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "proc", "sys", "dev", "run", "tmp", "mnt", "lib/modules"} {
		mkdir(d)
	}
	copyFile(t, "/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755)
	files := map[string]string{}
	for dst, src := range g.Files {
		files[dst] = src
	}
	for _, b := range g.Binaries {
		files[b] = b
		for _, lib := range sharedLibs(t, b) {
			files[lib] = lib
		}
	}
	for dst, src := range files {
		mkdir(filepath.Dir(dst))
		copyFile(t, src, filepath.Join(root, dst), 0o755)
	}
	var insmod strings.Builder
	for _, m := range g.Modules {
		name, args, _ := strings.Cut(m, " ")
		ko := findModule(t, name)
		out, err := exec.Command("xz", "-dc", ko).Output()
		if err != nil {
			t.Fatalf("xz -dc %s: %v", ko, err)
		}
		if err := os.WriteFile(filepath.Join(root, "lib/modules", name+".ko"), out, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&insmod, "insmod /lib/modules/%s.ko %s || echo insmod %s failed\n", name, args, name)
	}
	initScript := `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
` + insmod.String() + `
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
sh -e /test.sh
echo "GUEST-EXIT $?"
poweroff -f
`
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "test.sh"), []byte(g.Script), 0o755); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd.cpio")
	cpio := exec.Command("sh", "-c", "find . | busybox cpio -o -H newc > "+initrd)
	cpio.Dir = root
	if out, err := cpio.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var console bytes.Buffer
	// Two vCPUs (the NBD driver maps a queue, so a connection, per CPU)
	// emulated by one host thread: multi-threaded TCG once let a vCPU run
	// stale code while the kernel patched its text at boot ("Oops: int3"
	// in sched_clock_cpu, a CI failure on session 6's first run).
	args := []string{"-cpu", "max", "-smp", "2", "-accel", "tcg,thread=single", "-m", "1024",
		"-kernel", filepath.Join(VMDir(), "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"}
	for _, d := range g.Disks {
		args = append(args, "-drive", "file="+d+",if=virtio,format=raw")
	}
	for _, d := range g.Drives {
		args = append(args, "-drive", d)
	}
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	var w io.Writer = &console
	if g.OnLine != nil {
		w = io.MultiWriter(&console, &lineWriter{fn: g.OnLine})
	}
	qemu.Stdout, qemu.Stderr = w, w
	err := qemu.Run()
	out := strings.ReplaceAll(console.String(), "\r\n", "\n")
	if ctx.Err() != nil {
		t.Fatalf("guest still running after %v; console:\n%s", timeout, out)
	}
	if err != nil {
		t.Fatalf("qemu: %v; console:\n%s", err, out)
	}
	return out
}

// sharedLibs lists the libraries (and the loader) ldd finds for bin.
func sharedLibs(t testing.TB, bin string) []string {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs
}

func findModule(t testing.TB, name string) string {
	t.Helper()
	var found string
	filepath.WalkDir(filepath.Join(VMDir(), "modules"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == name+".ko.xz" {
			found = p
			return fs.SkipAll
		}
		return nil
	})
	if found == "" {
		t.Fatalf("module %s not in %s", name, VMDir())
	}
	return found
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// lineWriter calls fn with each complete line written to it.
type lineWriter struct {
	fn   func(string)
	part []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.fn(strings.TrimRight(string(w.part[:i]), "\r"))
		w.part = w.part[i+1:]
	}
}
