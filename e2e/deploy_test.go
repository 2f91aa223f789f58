package e2e

import (
	"errors"
	"io"
	"os"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/lazyblk/lazyblk/config"
)

// TestKubernetesManifest checks deploy/kubernetes/lazyblk.yaml for what
// the daemons need on a node. No cluster runs here: this is the only check
// the manifest gets, besides kubectl's on apply.
func TestKubernetesManifest(t *testing.T) {
	f, err := os.Open("../deploy/kubernetes/lazyblk.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type mount struct {
		Name             string
		MountPath        string `yaml:"mountPath"`
		MountPropagation string `yaml:"mountPropagation"`
	}
	var ds struct {
		Kind string
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Name            string
						Args            []string
						SecurityContext struct{ Privileged bool } `yaml:"securityContext"`
						VolumeMounts    []mount                   `yaml:"volumeMounts"`
					}
					Volumes []struct {
						Name      string
						HostPath  struct{ Path string } `yaml:"hostPath"`
						ConfigMap struct{ Name string } `yaml:"configMap"`
					}
				}
			}
		}
	}
	var cm struct {
		Kind string
		Data map[string]string
	}
	dec := yaml.NewDecoder(f)
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("manifest: %v", err)
		}
		var kind struct{ Kind string }
		doc.Decode(&kind)
		switch kind.Kind {
		case "DaemonSet":
			err = doc.Decode(&ds)
		case "ConfigMap":
			err = doc.Decode(&cm)
		default:
			t.Errorf("unexpected kind %q", kind.Kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	hostPaths := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	commands := map[string]bool{}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if !c.SecurityContext.Privileged {
			t.Errorf("container %s is not privileged", c.Name)
		}
		mounted := map[string]mount{}
		for _, m := range c.VolumeMounts {
			mounted[m.MountPath] = m
			if p := hostPaths[m.Name]; p != "" && p != m.MountPath {
				t.Errorf("container %s mounts host %s on %s: the daemons' paths must match the host's", c.Name, p, m.MountPath)
			}
		}
		for _, p := range []string{"/run/lazyblk", "/var/lib/lazyblk", "/etc/lazyblk"} {
			if _, ok := mounted[p]; !ok {
				t.Errorf("container %s does not mount %s", c.Name, p)
			}
		}
		if mounted["/var/lib/lazyblk"].MountPropagation != "Bidirectional" {
			t.Errorf("container %s: /var/lib/lazyblk without Bidirectional propagation: containerd would not see its mounts", c.Name)
		}
		for _, a := range c.Args {
			commands[a] = true
		}
	}
	if !commands["fetcher"] || !commands["snapshotter"] {
		t.Errorf("the DaemonSet runs %v, want the fetcher and the snapshotter", commands)
	}
	for _, p := range []string{"/dev", "/run/containerd/containerd.sock"} {
		found := false
		for _, hp := range hostPaths {
			found = found || hp == p
		}
		if !found {
			t.Errorf("no host mount of %s", p)
		}
	}
	// The configuration files are valid for the daemons.
	dir := t.TempDir()
	for name, body := range cm.Data {
		p := dir + "/" + name
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		switch name {
		case "fetcher.toml":
			_, err = config.LoadFetcher(p)
		case "snapshotter.toml":
			_, err = config.LoadSnapshotter(p)
		default:
			err = errors.New("unknown file")
		}
		if err != nil {
			t.Errorf("%s from the ConfigMap: %v", name, err)
		}
	}
	if len(cm.Data) != 2 {
		t.Errorf("ConfigMap holds %d files, want fetcher.toml and snapshotter.toml", len(cm.Data))
	}
}
