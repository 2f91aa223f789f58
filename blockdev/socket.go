package blockdev

import (
	"fmt"
	"net"
	"os"

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
