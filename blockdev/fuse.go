package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// fuseReadyTimeout bounds nbdfuse's start: connect, negotiate, mount FUSE.
	fuseReadyTimeout = 30 * time.Second
	// fuseStopTimeout bounds its exit once its FUSE directory is unmounted.
	fuseStopTimeout = 10 * time.Second
)

// startFuse serves srv on a unix socket in m.Work and runs nbdfuse on it:
// the export appears as the file Work/fuse/image.
func (m *Mount) startFuse(srv *Server, connections int) error {
	if _, err := exec.LookPath("nbdfuse"); err != nil {
		return fmt.Errorf("blockdev: nbdfuse not found (apt-get install libnbd-bin): %w", err)
	}
	sock := filepath.Join(m.Work, "nbd.sock")
	pidfile := filepath.Join(m.Work, "nbdfuse.pid")
	for _, p := range []string{sock, pidfile} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.MkdirAll(m.fuseDir(), 0o700); err != nil {
		return err
	}
	l, err := ListenUnix(sock, "")
	if err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	go func() {
		if err := srv.Serve(l); err != nil {
			srv.opts.log.Error("nbd listener failed", "socket", sock, "err", err)
		}
	}()

	ino, err := watchCreate(m.Work)
	if err != nil {
		return err
	}
	defer ino.Close()
	var stderr bytes.Buffer
	cmd := exec.Command("nbdfuse", "-r", "-C", strconv.Itoa(connections), "-P", pidfile,
		filepath.Join(m.fuseDir(), "image"), "nbd+unix:///?socket="+sock)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's ^C is for us, not for it
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("blockdev: start nbdfuse: %w", err)
	}
	m.fuse, m.FusePID = cmd, cmd.Process.Pid
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		exited <- err
		ino.Close() // wakes the watch below if nbdfuse died first
	}()
	if err := ino.wait("nbdfuse.pid", fuseReadyTimeout); err != nil {
		select {
		case werr := <-exited:
			m.fuse = nil
			return fmt.Errorf("blockdev: nbdfuse exited before it was ready: %v: %s", werr, strings.TrimSpace(stderr.String()))
		default:
			return fmt.Errorf("blockdev: nbdfuse not ready: %w", err)
		}
	}
	// Hand the exit status to stopFuse.
	m.fuseExited = exited
	m.Source = filepath.Join(m.fuseDir(), "image")
	return nil
}

// stopFuse unmounts nbdfuse's FUSE directory and waits for nbdfuse to
// exit, killing it if it does not; it works on an nbdfuse started by
// another process (after a crash) too.
func (m *Mount) stopFuse() error {
	var errs []error
	if err := unix.Unmount(m.fuseDir(), 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		// Still busy (a loop device clearing): detach it from the tree;
		// the kernel finishes once the last user lets go.
		if err := unix.Unmount(m.fuseDir(), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("blockdev: unmount %s: %w", m.fuseDir(), err))
		}
	}
	if m.fuseExited != nil {
		select {
		case <-m.fuseExited:
		case <-time.After(fuseStopTimeout):
			m.fuse.Process.Kill()
			<-m.fuseExited
		}
		m.fuse, m.fuseExited = nil, nil
	} else if m.FusePID > 0 {
		errs = append(errs, reap(m.FusePID, "nbdfuse"))
	}
	m.FusePID = 0
	for _, p := range []string{m.fuseDir(), filepath.Join(m.Work, "nbd.sock"), filepath.Join(m.Work, "nbdfuse.pid")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reap waits for an nbdfuse this process did not start (the server that
// did crashed) to exit after its FUSE unmount, and kills it if it lingers.
// It checks the name first: after a crash the pid may be someone else's.
func reap(pid int, name string) error {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || strings.TrimSpace(string(comm)) != name {
		return nil // gone, or not ours any more
	}
	return StopProcess(pid, 0, fuseStopTimeout)
}

// StopProcess sends sig (none when 0) to pid, waits up to wait for it to
// exit, and kills it if it has not. A process already gone is not an
// error. The wait is on a pidfd: no polling, no pid reuse race.
func StopProcess(pid int, sig unix.Signal, wait time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blockdev: pid %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if sig != 0 {
		if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
			return nil // exited meanwhile
		}
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(wait/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n == 1 {
			return nil
		}
		break
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("blockdev: kill pid %d: %w", pid, err)
	}
	return nil
}

// inotify watches one directory for files being written or moved in.
type inotify struct{ f *os.File }

func watchCreate(dir string) (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("blockdev: inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("blockdev: inotify %s: %w", dir, err)
	}
	// Non-blocking, so reads go through Go's poller and honour deadlines
	// and Close.
	return &inotify{f: os.NewFile(uintptr(fd), "inotify")}, nil
}

func (w *inotify) Close() error { return w.f.Close() }

// wait returns once a file called name has been written in the directory.
func (w *inotify) wait(name string, timeout time.Duration) error {
	if err := w.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return err
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if string(bytes.TrimRight(raw, "\x00")) == name {
				return nil
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}
