package mounts

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lazyblk/lazyblk/blockdev"
)

// DefaultRoot holds one directory per mount, named by a hash of the
// mountpoint:
//
//	/run/lazyblk/mounts/<sha256(dir)[:16]>/
//	    state.json    State: what was asked, what is set up, who serves it
//	    serve.log     the serving process's log
//	    ctl.sock      the serving process's control socket (stats, prefetch)
//	    nbd.sock      nbdfuse's NBD socket (nbdfuse only)
//	    nbdfuse.pid   written by nbdfuse once ready
//	    fuse/         nbdfuse's FUSE mountpoint; nothing else may live there
//
// /run is a tmpfs: after a reboot nothing is mounted and no state is left.
const DefaultRoot = "/run/lazyblk"

// State is state.json.
type State struct {
	Source      Source          `json:"source"`
	Dir         string          `json:"dir"`
	Attach      string          `json:"attach"` // as asked: auto, ublk, netlink or nbdfuse
	Connections int             `json:"connections"`
	IOTimeout   time.Duration   `json:"ioTimeout,omitempty"` // kernel NBD only
	Options     string          `json:"options,omitempty"`   // mount(8) options over the defaults
	PID         int             `json:"pid,omitempty"`       // the serving process
	Mount       *blockdev.Mount `json:"mount,omitempty"`
	Started     time.Time       `json:"started"`
	Background  Background      `json:"background"`
	// Serving is filled in by List and Get: the serving process runs.
	Serving bool `json:"serving"`
}

func workDir(root, dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(root, "mounts", hex.EncodeToString(sum[:8]))
}

func readState(work string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(work, "state.json"))
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(work, "state.json"), err)
	}
	st.Serving = st.serverAlive(work)
	return &st, nil
}

// write replaces state.json atomically: a crash leaves the old or the new.
func (st *State) write(work string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return replaceFile(filepath.Join(work, "state.json"), b)
}

// replaceFile writes path through a temp file and a rename: readers see
// the old content or the new, never part of it.
func replaceFile(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// serverAlive reports whether the recorded serving process still runs: the
// pid exists and is a lazyblk serving this state directory (a pid reused
// after a crash is someone else's).
func (st *State) serverAlive(work string) bool {
	return st.PID > 0 && serves(st.PID, work)
}

// serves reports whether process pid is a lazyblk serving the mount whose
// state is in work.
func serves(pid int, work string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	return len(args) >= 3 && args[1] == ServeCommand && args[len(args)-1] == work
}

// servers returns every process serving the mount whose state is in work,
// whatever the state records: the pid it names, or one it does not (a
// state rewritten or lost, a server started for it by a mount command that
// died before the server reported).
func servers(work string) []int {
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		if pid, err := strconv.Atoi(p.Name()); err == nil && serves(pid, work) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// AbsDir resolves a mountpoint argument to the absolute, symlink-free
// path the kernel records, so every command finds the same state.
func AbsDir(arg string) (string, error) {
	abs, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return abs, nil
}
