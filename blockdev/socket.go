package blockdev

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"

	"golang.org/x/sys/unix"
)

// Socketpair returns a connected pair of unix stream sockets: one end for
// the server (Transmit), the other for the kernel (Attach, Reconfigure),
// which keeps its own reference, so the caller closes its copy once
// handed over.
func Socketpair() (server net.Conn, kernel *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("blockdev: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[0]), "nbd-server")
	defer f.Close()
	server, err = net.FileConn(f)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("blockdev: socketpair: %w", err)
	}
	return server, os.NewFile(uintptr(fds[1]), "nbd-kernel"), nil
}

// ListenUnix listens on a unix socket at path that only its owner may
// use (0600), or with group set, its owner and that group (0660): an
// export or a control socket is never open to every local user. The
// socket is removed again if its mode cannot be set.
func ListenUnix(path, group string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if group != "" {
		g, err := user.LookupGroup(group)
		if err == nil {
			gid, _ := strconv.Atoi(g.Gid)
			err = os.Chown(path, -1, gid)
		}
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("socket %s: group %q: %w", path, group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}
