// Package cache is the node-wide chunk store: chunks keyed by the sha256
// of their uncompressed bytes (so identical chunks of different images are
// stored once), striped over several directories, bounded in bytes,
// crash-safe. It knows nothing of HTTP or NBD.
//
// # On disk
//
//	<dir 0>/chunks/ab/ab12…ef      one file per chunk, its uncompressed bytes
//	<dir 0>/chunks/ab/.tmp-…       a write in progress (removed at Open)
//	<dir 1>/chunks/…               chunk d lives in stripe d[0] % N
//
// Each directory is meant to be its own volume (RAID0-like): a sequential
// fill writes consecutive chunks to every volume in turn, so N volumes
// whose write ceiling is 125 MiB/s each (EBS gp3) absorb N times that.
//
// # Lifecycle and guarantees
//
// Put verifies the bytes against the digest, writes a temp file in the
// chunk's directory with the CRC-32C of its bytes in an extended
// attribute, fsyncs it, renames it into place and fsyncs the directory: a
// crash leaves nothing or the whole chunk. Open reuses what a previous run
// left (temp files removed, the rest indexed, oldest first for eviction)
// and every chunk is checked the first time it is read after Open — by
// its CRC, or by its sha256 where the CRC is missing or does not match —
// so a chunk corrupted on disk while no process watched is removed and
// reported as a miss: refetched by the caller, never served. Chunks
// written or checked by this process are trusted afterwards: checking
// every warm read would cost more than reading it.
//
// How a chunk is written depends on when it will be read (When). One a
// reader will read from the cache soon (readahead ahead of a slower
// reader, a trace's prefetch, a scattered reader's miss and its
// neighbours) is written through the
// page cache, so those reads come from memory: written around it, a cold 2
// GiB read read its 2 GiB back from the cache disk, which on a volume
// whose throughput ceiling counts reads and writes together (EBS gp3)
// halves a cold read. The rest — the fill's chunks, which nobody may read
// for hours, and the chunk a sequential reader is in or has passed, which
// it takes from the fetch's memory — is
// written with O_DIRECT when its buffer and length are 4 KiB-aligned
// (every full 4 MiB chunk the fetcher writes): in the page cache they
// would only push out other pages, and the copy there costs CPU. Where
// the filesystem refuses O_DIRECT the write is an ordinary one.
// Open chunk files are kept for the next read (files.go).
//
// # Eviction
//
// A plain LRU over bytes, not ristretto: eviction must account bytes
// exactly against the configured capacity and must never refuse a chunk
// just fetched (TinyLFU admission would drop it and force a refetch on
// the very next read). Chunks being read are skipped, and so are the
// chunks WithPinned names (running containers' working sets). Once past
// its capacity a store evicts down to its low watermark. An evicted chunk
// is simply fetched again. Metadata is updated before files are removed.
//
// Several processes may share the directories (one per mount); each
// indexes what it finds at Open plus what it writes, and Rescan catches up
// with what the others added and removed, so that calling it now and then
// bounds the directories by the capacity.
package cache
