// Package mounts runs lazyblk mounts: one serving process per mount (the
// image's NBD server and fetcher), its state under a root directory, and
// the operations on it — mount, unmount, reattach, list, stats, prefetch.
// `lazyblk mount` and the fetcher daemon both use it, so a mount made by
// one is seen and taken down by the other.
//
// Each mount has its own serving process in a session of its own. It
// outlives whoever started it: the fetcher daemon can be restarted (or
// killed) without a running container noticing, and a serving process
// that dies takes only its own mount with it — on the kernel NBD path
// `Reattach` hands the live device to a new one. nbdfuse, the fallback
// attach, cannot take a new server: its connections end with the process
// that served them.
package mounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyblk/lazyblk/blockdev"
)

// ServeCommand is the hidden subcommand of the lazyblk binary that runs a
// mount's serving process (it calls Serve).
const ServeCommand = "serve-mount"

// serverStopTimeout bounds the wait for a serving process to finish after
// SIGTERM: it unmounts and detaches, which takes milliseconds unless the
// kernel is stuck on a dead registry.
const serverStopTimeout = 30 * time.Second

// ErrNotMounted reports a directory with no lazyblk mount state.
var ErrNotMounted = errors.New("not a lazyblk mount")

// ErrBusy reports a directory that already has a mount, or one being made.
var ErrBusy = errors.New("mountpoint busy")

// Request is one mount to make.
type Request struct {
	Source      Source
	Dir         string        // absolute, existing directory
	Attach      string        // auto, ublk, netlink or nbdfuse
	Connections int           // NBD connections, 1 to 64
	IOTimeout   time.Duration // kernel NBD request timeout, at least 1s
	Options     string        // mount(8) options over blockdev.DefaultMountOptions
	// Background is fetched below demand reads: trace replay, fill.
	Background Background
	// Exclusive refuses a directory that already has a mount even of the
	// same image; otherwise that mount is returned (a retried request).
	Exclusive bool
}

// FieldError is a request whose field (attach, connections, io-timeout)
// has a bad value; the CLI names its flag, the daemon the field.
type FieldError struct {
	Field string
	Value any
	Want  string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s %q: want %s", e.Field, fmt.Sprint(e.Value), e.Want)
}

// Check validates a request without touching the network.
func (r Request) Check() error {
	if err := r.Source.Check(); err != nil {
		return err
	}
	if r.Attach != "auto" && r.Attach != blockdev.AttachUblk && r.Attach != blockdev.AttachNetlink && r.Attach != blockdev.AttachNBDFuse {
		return &FieldError{"attach", r.Attach, "auto, ublk, netlink or nbdfuse"}
	}
	if r.Connections < 1 || r.Connections > 64 {
		return &FieldError{"connections", r.Connections, "1 to 64"}
	}
	if r.IOTimeout < time.Second {
		return &FieldError{"io-timeout", r.IOTimeout, "at least 1s"}
	}
	if _, _, err := blockdev.ParseMountOptions(r.Options); err != nil {
		return &FieldError{"options", r.Options, "mount(8) options (" + err.Error() + ")"}
	}
	if r.Background.FillBelow < 0 {
		return &FieldError{"fill-below", r.Background.FillBelow, "a size, or 0 for never"}
	}
	if r.Background.FillRate < 0 {
		return &FieldError{"fill-rate", r.Background.FillRate, "bytes per second, or 0 for unlimited"}
	}
	if !filepath.IsAbs(r.Dir) {
		return fmt.Errorf("mountpoint %q is not an absolute path", r.Dir)
	}
	if fi, err := os.Stat(r.Dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("mountpoint %s is not a directory", r.Dir)
	}
	return nil
}

// Manager makes and tracks mounts whose state lives under Root.
type Manager struct {
	Root string // DefaultRoot unless set
	// Exe is the lazyblk binary whose ServeCommand runs a mount's server;
	// the running executable unless set.
	Exe string

	mu    sync.Mutex
	locks map[string]*dirLock // per mountpoint being mounted or unmounted; gone when idle
}

func (m *Manager) root() string {
	if m.Root == "" {
		return DefaultRoot
	}
	return m.Root
}

// dirLock is one mountpoint's lock and how many hold or wait for it.
type dirLock struct {
	sync.Mutex
	users int
}

// lock serialises operations on one mountpoint within this process;
// across processes the state directory's mkdir is the claim. An idle
// mountpoint's lock is dropped, so a long-running daemon keeps none.
func (m *Manager) lock(dir string) func() {
	m.mu.Lock()
	if m.locks == nil {
		m.locks = map[string]*dirLock{}
	}
	l, ok := m.locks[dir]
	if !ok {
		l = &dirLock{}
		m.locks[dir] = l
	}
	l.users++
	m.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		m.mu.Lock()
		if l.users--; l.users == 0 {
			delete(m.locks, dir)
		}
		m.mu.Unlock()
	}
}

// Mount mounts req.Source on req.Dir and returns once it is mounted, with
// a note for the user when auto attach fell back to nbdfuse. A mount of
// the same image already served on Dir is returned as it is.
func (m *Manager) Mount(ctx context.Context, req Request) (*State, string, error) {
	if err := req.Check(); err != nil {
		return nil, "", err
	}
	defer m.lock(req.Dir)()
	work := workDir(m.root(), req.Dir)
	if err := os.MkdirAll(filepath.Dir(work), 0o700); err != nil {
		return nil, "", err
	}
	if err := os.Mkdir(work, 0o700); errors.Is(err, os.ErrExist) {
		st, err := readState(work)
		switch {
		case err != nil:
			return nil, "", fmt.Errorf("%w: %s has a mount being made, or state left by a crash (lazyblk umount %s)", ErrBusy, req.Dir, req.Dir)
		case st.Serving && !req.Exclusive && st.Source.Ref == req.Source.Ref && st.Source.IndexDigest == req.Source.IndexDigest:
			return st, "", nil
		case st.Serving:
			return nil, "", fmt.Errorf("%w: %s already has %s mounted (lazyblk umount %s)", ErrBusy, req.Dir, st.Source.Ref, req.Dir)
		default:
			return nil, "", fmt.Errorf("%w: %s has state left by a server that died (lazyblk umount %s, or lazyblk reattach %s)", ErrBusy, req.Dir, req.Dir, req.Dir)
		}
	} else if err != nil {
		return nil, "", err
	}
	st := &State{Source: req.Source, Dir: req.Dir, Attach: req.Attach, Connections: req.Connections,
		IOTimeout: req.IOTimeout, Options: req.Options, Started: time.Now(), Background: req.Background}
	if err := st.write(work); err != nil {
		os.RemoveAll(work)
		return nil, "", err
	}
	rep, err := m.startServer(ctx, work, true)
	if err != nil {
		return nil, "", err
	}
	rep.State.Serving = true
	return rep.State, rep.Note, nil
}

// Get returns the state of the mount on dir.
func (m *Manager) Get(dir string) (*State, error) {
	st, err := readState(workDir(m.root(), dir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (no state in %s)", dir, ErrNotMounted, workDir(m.root(), dir))
	}
	return st, err
}

// List returns every recorded mount, ordered by mountpoint.
func (m *Manager) List() ([]*State, error) {
	ents, err := os.ReadDir(filepath.Join(m.root(), "mounts"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*State
	for _, e := range ents {
		st, err := readState(filepath.Join(m.root(), "mounts", e.Name()))
		if err != nil {
			continue // being made, or torn down meanwhile
		}
		out = append(out, st)
	}
	return out, nil
}

// Unmount unmounts dir, detaches its device, stops its serving process
// and removes the state. It also cleans up after a server that crashed,
// and refuses, changing nothing, while dir is busy.
func (m *Manager) Unmount(dir string) error { return m.unmount(dir, false) }

// ForceUnmount is Unmount that does not refuse a busy dir: the filesystem
// is detached at once (MNT_DETACH: it leaves the mount table, and the
// kernel frees it when its last user lets go), the reads in flight fail
// with EIO, and the device and serving process go as with Unmount. For a
// mount whose readers are stuck on a registry that does not answer:
// they get their error within seconds and nothing stays behind them.
func (m *Manager) ForceUnmount(dir string) error { return m.unmount(dir, true) }

func (m *Manager) unmount(dir string, force bool) error {
	defer m.lock(dir)()
	work := workDir(m.root(), dir)
	st, err := readState(work)
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(work); err == nil { // a mount that died before it wrote its state
			if err := stopServers(dir, work); err != nil {
				return err
			}
			return teardown(work, nil)
		}
		return fmt.Errorf("%s: %w (no state in %s)", dir, ErrNotMounted, work)
	} else if err != nil {
		return err
	}
	// The filesystem first, so a busy mountpoint fails before anything
	// else is touched.
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		if !force || !errors.Is(err, unix.EBUSY) {
			return m.busy(dir, st, err)
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("umount --force %s: %w", dir, err)
		}
	}
	if err := stopServers(dir, work); err != nil {
		return err
	}
	// A server that stopped cleanly took everything down itself.
	if now, err := readState(work); errors.Is(err, os.ErrNotExist) {
		return teardown(work, nil)
	} else if err == nil {
		st = now
	}
	return teardown(work, st)
}

// busy explains a refused unmount: when the mount's serving process has
// reads stuck in flight, they are what holds it, and --force is the way
// out.
func (m *Manager) busy(dir string, st *State, err error) error {
	err = fmt.Errorf("umount %s: %w", dir, err)
	if !errors.Is(err, unix.EBUSY) {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s, serr := m.Stats(ctx, st); serr == nil && s.Server.Stuck > 0 {
		return fmt.Errorf("%w: %d reads stuck in flight, the oldest for %v (is the registry down? lazyblk status); "+
			"umount --force fails them and detaches", err, s.Server.Stuck, s.Server.Oldest.Round(time.Second))
	}
	return fmt.Errorf("%w: files are open or a working directory is there; umount --force detaches it anyway", err)
}

// stopServers stops every process serving the mount on dir, the one its
// state records and any other (servers): none may outlive its mount.
func stopServers(dir, work string) error {
	for _, pid := range servers(work) {
		if err := blockdev.StopProcess(pid, unix.SIGTERM, serverStopTimeout); err != nil {
			return fmt.Errorf("umount %s: stop server: %w", dir, err)
		}
	}
	return nil
}

// Reattach starts a new serving process for a kernel NBD mount whose
// server died; it hands the live device fresh connections, so reads in
// flight and after complete.
func (m *Manager) Reattach(ctx context.Context, dir string) (*State, error) {
	defer m.lock(dir)()
	st, err := m.Get(dir)
	if err != nil {
		return nil, err
	}
	if st.Serving {
		return nil, fmt.Errorf("reattach %s: still served by pid %d", dir, st.PID)
	}
	if st.Mount == nil || !st.Mount.Recoverable() {
		return nil, fmt.Errorf("reattach %s: attached through nbdfuse, which cannot take a new server; unmount it and mount again", dir)
	}
	rep, err := m.startServer(ctx, workDir(m.root(), dir), false)
	if err != nil {
		return nil, err
	}
	rep.State.Serving = true
	return rep.State, nil
}

// teardown removes whatever a mount still holds (device, nbdfuse, state);
// safe when parts are already gone.
func teardown(work string, st *State) error {
	if st != nil && st.Mount != nil {
		if err := st.Mount.Unmount(); err != nil {
			return fmt.Errorf("umount %s: %w (state kept in %s)", st.Dir, err, work)
		}
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	os.Remove(filepath.Dir(work)) // the mounts directory, when this was the last
	return nil
}

// readyReport is what the serving process sends its parent once the mount
// is up (State) or has failed (Error).
type readyReport struct {
	State *State `json:"state,omitempty"`
	Note  string `json:"note,omitempty"`
	Error string `json:"error,omitempty"`
}

// startServer starts the serving process for work in a session of its own
// (it outlives its parent and the terminal) and waits for its report.
// When a fresh mount fails, everything it set up goes; when a reattach
// fails, the mount and its state stay for another try or an unmount.
// Cancelling ctx kills a server that has not reported yet.
func (m *Manager) startServer(ctx context.Context, work string, fresh bool) (*readyReport, error) {
	self := m.Exe
	if self == "" {
		var err error
		if self, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	log, err := os.OpenFile(filepath.Join(work, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(self, ServeCommand, work)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.ExtraFiles = []*os.File{w} // fd 3: the report
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		if fresh {
			os.RemoveAll(work)
		}
		return nil, fmt.Errorf("start server: %w", err)
	}
	go cmd.Wait() // reap it if it exits while this process still runs
	stop := context.AfterFunc(ctx, func() { cmd.Process.Signal(unix.SIGTERM) })
	defer stop()
	var rep readyReport
	err = json.NewDecoder(r).Decode(&rep) // one report, or EOF if it died first
	if err != nil || rep.State == nil && rep.Error == "" {
		tail, _ := os.ReadFile(filepath.Join(work, "serve.log"))
		err := fmt.Errorf("server exited before it was ready:\n%s", lastLines(string(tail), 10))
		if fresh { // tear down whatever it set up
			st, _ := readState(work)
			err = errors.Join(err, teardown(work, st))
		}
		return nil, err
	}
	if rep.Error != "" {
		if fresh {
			os.RemoveAll(work)
		}
		return nil, errors.New(rep.Error)
	}
	if err := ctx.Err(); err != nil { // the server got SIGTERM and takes its mount down
		return nil, err
	}
	return &rep, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
