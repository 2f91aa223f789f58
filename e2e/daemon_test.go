package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// daemon is a long-running process a test started; its output goes to
// log.
type daemon struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startDaemon starts name with args and returns once a line of its
// stderr contains ready — the daemon's own readiness message, not a
// timer. It fails the test if the daemon exits first or stays silent for
// a minute. The daemon is killed at cleanup unless stopped before.
func startDaemon(t *testing.T, ready, name string, args ...string) *daemon {
	t.Helper()
	return startDaemonEnv(t, nil, ready, name, args...)
}

// startDaemonEnv is startDaemon with env added to the test's environment.
func startDaemonEnv(t *testing.T, env []string, ready, name string, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(name, args...), done: make(chan struct{})}
	if env != nil {
		d.cmd.Env = append(os.Environ(), env...)
	}
	d.log = filepath.Join(t.TempDir(), filepath.Base(name)+".log")
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout = logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen := false
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if !seen && strings.Contains(sc.Text(), ready) {
				seen = true
				close(up)
			}
		}
		d.cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	t.Cleanup(func() { d.kill() })
	select {
	case <-up:
		return d
	case <-d.done:
		b, _ := os.ReadFile(d.log)
		t.Fatalf("%s exited before it was ready:\n%s", name, b)
	case <-time.After(time.Minute):
		b, _ := os.ReadFile(d.log)
		t.Fatalf("%s not ready after a minute:\n%s", name, b)
	}
	return nil
}

// tail returns the last n lines the daemon logged, for a failure message.
func (d *daemon) tail(n int) string {
	b, _ := os.ReadFile(d.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// kill stops the daemon with SIGKILL and waits for it.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// stop asks the daemon to finish (SIGTERM) and waits for it.
func (d *daemon) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(time.Minute):
		d.kill()
	}
}

// noFillConfig writes a fetcher configuration under dir that fills no
// image by itself, so a test sees what its reads fetched (and what an
// explicit Prefetch adds).
func noFillConfig(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "fetcher.toml")
	if err := os.WriteFile(p, []byte("[prefetch]\nfill_below = \"0\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
