// Package snapshotter will plug lazyblk into containerd as a remote
// snapshotter (proxy plugin). Not implemented yet: see the snapshotter
// issue.
package snapshotter
