// Package cache will be the node-wide chunk store keyed by chunk digest,
// striped over several directories (one per volume), bounded and
// crash-safe. Not implemented yet: see the fetcher/cache issue.
package cache
