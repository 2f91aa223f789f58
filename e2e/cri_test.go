package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// criRuntime is a containerd whose CRI plugin pulls into lazyblk: the
// kubelet's path, driven here by crictl.
type criRuntime struct {
	containerd string   // the binary
	env        []string // for containerd: PATH with its shim first
	// config is containerd's configuration; annotations false leaves
	// disable_snapshot_annotations at true, a misconfigured node.
	config func(e *containerdEnv, hostsDir, sandbox, runc string, annotations bool) string
}

// TestCRIContainerd2 and TestCRIContainerd16: with CRI configured for the
// lazyblk snapshotter exactly as the README says (no lazyblk pull),
// crictl pull of a converted image goes lazy, a pod (host network, no
// CNI) runs a container from it, exec and logs work, the registry serves
// a small part of the image, the container keeps reading through kill -9
// and restarts of the fetcher daemon and the snapshotter, and rmi
// releases the block image. Then a node configured without snapshot
// annotations: the pull falls back to a full download, and lazyblk status,
// the snapshotter's log and its metric say so, naming the setting.
func TestCRIContainerd2(t *testing.T) {
	bin := testutil.Tool(t, testutil.ContainerdV2, "containerd")
	runc := testutil.Tool(t, testutil.RuncV1, "runc")
	testCRI(t, criRuntime{containerd: bin, env: []string{"PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH")},
		config: func(e *containerdEnv, hostsDir, sandbox, _ string, annotations bool) string {
			return containerd2Config(e, hostsDir, sandbox, runc, annotations)
		}})
}

func TestCRIContainerd16(t *testing.T) {
	testutil.Require(t, true, "containerd", "runc", "containerd-shim-runc-v2")
	testCRI(t, criRuntime{containerd: "containerd", config: containerd16Config})
}

// containerd2Config is the README's containerd 2.x configuration, plus
// what only a test needs: private paths, the test's pause image and runc,
// and restrict_oom_score_adj (these machines lack CAP_SYS_RESOURCE).
func containerd2Config(e *containerdEnv, hostsDir, sandbox, runc string, annotations bool) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
[grpc]
  address = %q

# --- the README's snippet ---
[proxy_plugins.lazyblk]
  type = "snapshot"
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "lazyblk"
  disable_snapshot_annotations = %v

# The transfer service unpacks what CRI pulls; it needs the snapshotter too.
[[plugins.'io.containerd.transfer.v1.local'.unpack_config]]
  platform = "linux/amd64"
  snapshotter = "lazyblk"
# --- end of the README's snippet ---

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %q
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = %q
  Root = %q
`, filepath.Join(e.dir, "containerd/root"), filepath.Join(e.dir, "containerd/state"), e.ctrSock, e.snapSock,
		!annotations, sandbox, hostsDir, runc, e.runcRoot())
}

// containerd16Config is the README's containerd 1.6 configuration, plus
// the test's own settings as for containerd2Config.
func containerd16Config(e *containerdEnv, hostsDir, sandbox, _ string, annotations bool) string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q

# --- the README's snippet ---
[proxy_plugins.lazyblk]
  type = "snapshot"
  address = %q

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "lazyblk"
  disable_snapshot_annotations = %v
# --- end of the README's snippet ---

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = %q
`, filepath.Join(e.dir, "containerd/root"), filepath.Join(e.dir, "containerd/state"), e.ctrSock, e.snapSock,
		!annotations, sandbox, hostsDir, e.runcRoot())
}

func testCRI(t *testing.T, rt criRuntime) {
	crictlBin := testutil.Tool(t, testutil.Crictl, "crictl")
	e := newLazyblkDaemons(t)
	crictl := func(t *testing.T, args ...string) string {
		t.Helper()
		defer logSlow(t, time.Now(), "crictl", args)
		ep := "unix://" + e.ctrSock
		cmd := exec.Command(crictlBin, append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "2m"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("crictl %s: %v\n%s%s\ncontainerd:\n%s\nsnapshotter:\n%s", strings.Join(args, " "), err, out, stderr.Bytes(),
				e.containerd.tail(20), e.snapshotter.tail(20))
		}
		return strings.TrimSpace(string(out))
	}

	// The images: a pause image for the sandbox, and the app, converted.
	entries, weightsSum := ctrImage(t)
	pause := e.registry + "/k8s/pause:1"
	pauseImg, err := mutate.Config(testutil.Image(t, false, testutil.Layer(t, entries[:2], testutil.Gzip, false)),
		v1.Config{Entrypoint: []string{"/bin/busybox", "sleep", "2147483647"}})
	if err != nil {
		t.Fatal(err)
	}
	push(t, pause, pauseImg)
	src, lazy := e.registry+"/cri/app:v1", e.registry+"/cri/app:v1-lazyblk"
	push(t, src, testutil.Image(t, false, testutil.Layer(t, entries, testutil.Gzip, false)))
	if _, stderr, code := run(t, "convert", "--plain-http", src, lazy); code != 0 {
		t.Fatalf("convert: exit %d: %s", code, stderr)
	}
	// CRI reaches the loopback registry over plain HTTP through hosts.toml.
	hostsDir := testutil.HostsDir(t, e.registry, fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
		e.registry, e.registry))
	sandbox := pause
	cfg := rt.config(e, hostsDir, sandbox, "", true)
	checkREADMESnippet(t, cfg, e.snapSock)
	e.startContainerd(t, rt.env, rt.containerd, cfg)
	t.Cleanup(func() { // before e.close: pods hold the image
		if e.containerd != nil {
			exec.Command(crictlBin, "--runtime-endpoint", "unix://"+e.ctrSock, "rmp", "-fa").Run()
		}
	})

	crictl(t, "pull", lazy)
	if n := e.snapshotterCounter(t, "lazyblk_snapshotter_remote_layers_total"); n != 1 {
		t.Fatalf("lazyblk_snapshotter_remote_layers_total %v after crictl pull, want 1 (snapshotter log:\n%s)", n, e.snapshotter.tail(20))
	}
	if ms := e.mounts(t); len(ms) != 1 || !ms[0].Serving {
		t.Fatalf("after crictl pull the fetcher has mounts %v, want one", ms)
	}

	dir := t.TempDir()
	podJSON, ctrJSON := filepath.Join(dir, "pod.json"), filepath.Join(dir, "ctr.json")
	writeJSON(t, podJSON, map[string]any{
		"metadata":      map[string]any{"name": "lazy", "namespace": "default", "uid": "lazy-uid"},
		"log_directory": filepath.Join(dir, "logs"),
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}}, // NODE
	})
	writeJSON(t, ctrJSON, map[string]any{
		"metadata": map[string]any{"name": "app"},
		"image":    map[string]any{"image": lazy},
		"command":  []string{"sh", "-c", "cat /etc/hello; exec sleep 3600"},
		"log_path": "app.log",
	})
	pod := crictl(t, "runp", podJSON)
	cid := crictl(t, "create", pod, ctrJSON, podJSON)
	crictl(t, "start", cid)
	if out := crictl(t, "exec", cid, "cat", "/etc/hello"); out != "hello from a lazyblk image" {
		t.Fatalf("crictl exec cat /etc/hello: %q", out)
	}
	// The container's first line reaches its log once it ran; poll for it.
	var logs string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && !strings.Contains(logs, "hello"); time.Sleep(50 * time.Millisecond) {
		logs = crictl(t, "logs", cid)
	}
	if logs != "hello from a lazyblk image" {
		t.Fatalf("crictl logs: %q", logs)
	}
	st := e.stats(t)
	if len(st) != 1 || st[0].BytesFetched == 0 || st[0].BytesFetched > st[0].ImageSize/4 {
		t.Fatalf("the registry served %d of %d bytes: want a small part", st[0].BytesFetched, st[0].ImageSize)
	}
	t.Logf("pod running; the registry served %.1f of %.1f MiB", float64(st[0].BytesFetched)/(1<<20), float64(st[0].ImageSize)/(1<<20))

	// kill -9 of both daemons; the container reads on, the whole weights
	// file included, after they restart.
	e.fetcher.kill()
	e.snapshotter.kill()
	e.startFetcher(t)
	e.startSnapshotter(t)
	if out := crictl(t, "exec", cid, "sha256sum", "/data/weights"); !strings.HasPrefix(out, weightsSum) {
		t.Fatalf("after kill -9 of the daemons sha256sum /data/weights = %q, want %s", out, weightsSum)
	}

	// rmi releases the block image once no container uses it.
	crictl(t, "stopp", pod)
	crictl(t, "rmp", pod)
	crictl(t, "rmi", lazy)
	if ms := e.mounts(t); len(ms) != 0 {
		t.Fatalf("after crictl rmi the fetcher still has mounts %v", ms)
	}

	// A node whose CRI passes no snapshot annotations: the layer is
	// downloaded whole, and that is said where an operator looks.
	e.containerd.stop()
	e.startContainerd(t, rt.env, rt.containerd, rt.config(e, hostsDir, sandbox, "", false))
	crictl(t, "pull", lazy)
	if ms := e.mounts(t); len(ms) != 0 {
		t.Fatalf("a pull without the image reference made mounts %v", ms)
	}
	out, stderr, code := run(t, "status", "--address", e.fetcherSock)
	if code != 0 || !strings.Contains(out, "WARNING") || !strings.Contains(out, "disable_snapshot_annotations = false") {
		t.Errorf("lazyblk status after a misconfigured pull: exit %d\n%s%s\nwant a warning naming disable_snapshot_annotations", code, out, stderr)
	}
	if b, _ := os.ReadFile(e.snapshotter.log); !bytes.Contains(b, []byte("containerd is misconfigured")) {
		t.Errorf("the snapshotter did not warn of the misconfiguration:\n%s", e.snapshotter.tail(20))
	}
	if n := scrapeMetrics(t, metricsURL(t, e.snapshotter)).must(t, "lazyblk_snapshotter_fallbacks_total", "reason", "labels"); n != 1 {
		t.Errorf("lazyblk_snapshotter_fallbacks_total{reason=labels} %v, want 1", n)
	}
	crictl(t, "rmi", lazy)
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkREADMESnippet fails unless README.md shows the part of cfg between
// the snippet markers, with the snapshotter's default socket for the
// test's: the README's configuration is the tested one.
func checkREADMESnippet(t *testing.T, cfg, snapSock string) {
	t.Helper()
	_, rest, _ := strings.Cut(cfg, "# --- the README's snippet ---\n")
	snippet, _, ok := strings.Cut(rest, "# --- end of the README's snippet ---")
	if !ok {
		t.Fatal("the configuration has no README snippet")
	}
	snippet = strings.ReplaceAll(snippet, fmt.Sprintf("%q", snapSock), `"/run/lazyblk/snapshotter.sock"`)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, []byte("```toml\n"+snippet+"```")) {
		t.Errorf("README.md does not show the tested containerd configuration:\n%s", snippet)
	}
}
