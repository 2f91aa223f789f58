// Package lazyblk holds repository-wide tests; the code lives in the
// packages below (see README.md).
package lazyblk
