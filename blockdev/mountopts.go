package blockdev

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultMountOptions are what a mount gets unless its options say
// otherwise: read-only always; no set-uid programs and no device files,
// since the image comes from a registry.
const DefaultMountOptions = "ro,nosuid,nodev"

// mountFlags are the mount(8) options that are flags of mount(2); each
// sets (true) or clears its flag.
var mountFlags = map[string]struct {
	flag uintptr
	set  bool
}{
	"suid": {unix.MS_NOSUID, false}, "nosuid": {unix.MS_NOSUID, true},
	"dev": {unix.MS_NODEV, false}, "nodev": {unix.MS_NODEV, true},
	"exec": {unix.MS_NOEXEC, false}, "noexec": {unix.MS_NOEXEC, true},
	"atime": {unix.MS_NOATIME, false}, "noatime": {unix.MS_NOATIME, true},
	"diratime": {unix.MS_NODIRATIME, false}, "nodiratime": {unix.MS_NODIRATIME, true},
	"relatime": {unix.MS_RELATIME, true}, "norelatime": {unix.MS_RELATIME, false},
	"strictatime": {unix.MS_STRICTATIME, true}, "nostrictatime": {unix.MS_STRICTATIME, false},
	"dirsync": {unix.MS_DIRSYNC, true}, "sync": {unix.MS_SYNCHRONOUS, true}, "async": {unix.MS_SYNCHRONOUS, false},
	"silent": {unix.MS_SILENT, true}, "loud": {unix.MS_SILENT, false},
}

// ParseMountOptions reads options in mount(8) syntax ("dev,suid",
// "noexec,user_xattr") on top of DefaultMountOptions: the flags of
// mount(2) it knows, and what is left, the filesystem's own options
// (erofs: user_xattr, acl, cache_strategy=...), is passed to it as data.
// "rw" is refused: a block image is read-only.
func ParseMountOptions(s string) (flags uintptr, data string, err error) {
	flags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV
	var fsOpts []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		switch f, ok := mountFlags[o]; {
		case o == "" || o == "ro" || o == "defaults":
		case o == "rw":
			return 0, "", fmt.Errorf("rw: a block image is read-only; write to an overlay over it")
		case ok && f.set:
			flags |= f.flag
		case ok:
			flags &^= f.flag
		case strings.ContainsAny(o, " \t\n"):
			return 0, "", fmt.Errorf("%q: options are separated by commas", o)
		default:
			fsOpts = append(fsOpts, o)
		}
	}
	return flags, strings.Join(fsOpts, ","), nil
}
