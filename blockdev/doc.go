// Package blockdev exposes block images as block devices: NBD, or ublk.
//
//   - server.go, negotiate.go, protocol.go: an NBD server for one or many
//     exports (fixed newstyle negotiation; many reads in flight per
//     connection, answered out of order by per-connection workers; a read
//     that fails answers EIO and the connection goes on). Transmit serves
//     a socket handed to the kernel, where no negotiation happens.
//   - splice.go: reads whose bytes lie in a file (FileBackend: a cached
//     chunk) are spliced from the file to the socket, never copied through
//     the server's memory — by the connection's reader itself when the
//     pages are already in memory, by a worker otherwise; everything else
//     is read with Backend.ReadAt.
//   - netlink.go, socket.go: kernel attach over the NBD generic-netlink
//     interface with socketpairs; Reconfigure hands a live device fresh
//     sockets, so a restarted server takes over a mounted device.
//   - uring.go, ublkctl.go, ublk.go, ublkqueue.go: ublk devices. A minimal
//     io_uring (128-byte entries for IORING_OP_URING_CMD); the control
//     commands on /dev/ublk-control (add, set parameters, start, stop,
//     delete, user recovery); one queue per CPU, each served by a
//     goroutine locked to its thread (the driver takes a queue's commands
//     from one task): it fetches a request per tag, hands reads to
//     goroutines that fill the tag's mapped buffer through Server.readAt,
//     and commits their answers, woken by an eventfd read on its ring.
//     Lifecycle: add → set params → queues fetch → start; a dead server's
//     device is quiesced by the driver and recovered (start recovery →
//     queues fetch → end recovery); stop → queues close → delete.
//   - mount.go, fuse.go: MountImage, the mount behind `lazyblk mount`: ublk
//     or the kernel's nbd driver where present, otherwise libnbd's nbdfuse
//     with an erofs (file-backed) or ext4 (loop) mount on its file.
package blockdev
