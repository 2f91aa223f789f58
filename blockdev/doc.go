// Package blockdev will expose block images as NBD devices: a concurrent
// NBD server with out-of-order replies, kernel attach over the NBD
// generic-netlink interface, and mount helpers (nbdfuse where the host has
// no nbd driver). Not implemented yet: see the block-device issue.
package blockdev
