// Package fetcherd is the fetcher daemon: the gRPC control API of
// api/fetcher/v1 on a unix socket, over a mounts.Manager. It owns the
// cache configuration every mount it makes reads through. The mounts'
// serving processes outlive it, so restarting the daemon never disturbs a
// running container; at start it hands kernel NBD devices whose server
// died to new servers (Recover).
package fetcherd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/mounts"
)

// Defaults are what a Mount request leaves unsaid.
type Defaults struct {
	Attach      string
	Connections int
	IOTimeout   time.Duration
	CacheDirs   []string
	CacheSize   int64
	CacheLow    float64
	HostsDir    string
	// AttemptTimeout and ReadTimeout: mounts.Source's.
	AttemptTimeout time.Duration
	ReadTimeout    time.Duration
	Background     mounts.Background
}

// Server implements fetcherv1.FetcherServer.
type Server struct {
	fetcherv1.UnimplementedFetcherServer
	Mounts   *mounts.Manager
	Defaults Defaults

	prom      metrics   // see MetricsHandler
	fallbacks fallbacks // see ReportFallback
	warm      warmed    // see Warm
}

// Mount mounts an image read-only on a directory.
func (s *Server) Mount(ctx context.Context, r *fetcherv1.MountRequest) (*fetcherv1.MountInfo, error) {
	req, err := s.mountRequest(r)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	st, note, err := s.Mounts.Mount(ctx, req)
	if err != nil {
		s.registry().failures.Inc()
		return nil, toStatus(err)
	}
	took := time.Since(start)
	if st.Mount != nil {
		s.registry().ready.WithLabelValues(st.Mount.Attach).Observe(took.Seconds())
	}
	slog.Info("mounted", "ref", r.Ref, "dir", st.Dir, "ms", took.Milliseconds(), "note", note)
	return info(st), nil
}

// mountRequest validates a Mount request from a client (a peer: the
// snapshotter, a platform) and fills in the daemon's defaults.
func (s *Server) mountRequest(r *fetcherv1.MountRequest) (mounts.Request, error) {
	d := s.Defaults
	req := mounts.Request{
		Source: mounts.Source{Ref: r.Ref, PlainHTTP: r.PlainHttp, CacheDirs: d.CacheDirs, CacheSize: d.CacheSize, CacheLow: d.CacheLow, HostsDir: d.HostsDir,
			IndexDigest: r.IndexDigest, IndexSize: r.IndexSize, AttemptTimeout: d.AttemptTimeout, ReadTimeout: d.ReadTimeout},
		Dir: filepath.Clean(r.Dir), Attach: r.Attach, Connections: int(r.Connections),
		IOTimeout: time.Duration(r.IoTimeoutMs) * time.Millisecond, Options: r.Options, Exclusive: r.Exclusive, Background: d.Background,
	}
	if req.Attach == "" {
		req.Attach = d.Attach
	}
	if req.Connections == 0 {
		req.Connections = d.Connections
	}
	if req.IOTimeout == 0 {
		req.IOTimeout = d.IOTimeout
	}
	if err := req.Check(); err != nil {
		return req, status.Errorf(codes.InvalidArgument, "mount %s: %v", r.Ref, err)
	}
	return req, nil
}

// Unmount takes a mount down.
func (s *Server) Unmount(_ context.Context, r *fetcherv1.UnmountRequest) (*fetcherv1.UnmountResponse, error) {
	if err := s.Mounts.Unmount(filepath.Clean(r.Dir)); err != nil {
		return nil, toStatus(err)
	}
	slog.Info("unmounted", "dir", r.Dir)
	return &fetcherv1.UnmountResponse{}, nil
}

// List returns every mount.
func (s *Server) List(context.Context, *fetcherv1.ListRequest) (*fetcherv1.ListResponse, error) {
	sts, err := s.Mounts.List()
	if err != nil {
		return nil, toStatus(err)
	}
	out := &fetcherv1.ListResponse{Fallbacks: s.latestFallbacks(), Warm: s.warm.list()}
	for _, st := range sts {
		out.Mounts = append(out.Mounts, info(st))
	}
	return out, nil
}

// Prefetch starts a background fill of a mount's image.
func (s *Server) Prefetch(ctx context.Context, r *fetcherv1.PrefetchRequest) (*fetcherv1.PrefetchResponse, error) {
	if err := s.Mounts.Prefetch(ctx, filepath.Clean(r.Dir)); err != nil {
		return nil, toStatus(err)
	}
	return &fetcherv1.PrefetchResponse{}, nil
}

// Stats returns the counters of one mount or of all.
func (s *Server) Stats(ctx context.Context, r *fetcherv1.StatsRequest) (*fetcherv1.StatsResponse, error) {
	var sts []*mounts.State
	if r.Dir != "" {
		st, err := s.Mounts.Get(filepath.Clean(r.Dir))
		if err != nil {
			return nil, toStatus(err)
		}
		sts = append(sts, st)
	} else {
		var err error
		if sts, err = s.Mounts.List(); err != nil {
			return nil, toStatus(err)
		}
	}
	out := &fetcherv1.StatsResponse{}
	for _, st := range sts {
		is := &fetcherv1.ImageStats{Dir: st.Dir, Ref: st.Source.Ref}
		if st.Serving {
			ms, err := s.Mounts.Stats(ctx, st)
			if err != nil && r.Dir != "" {
				return nil, toStatus(err)
			}
			if err == nil {
				is.ImageSize, is.Complete = ms.ImageSize, ms.Complete
				is.BytesFetched, is.CacheHits, is.CacheMisses = ms.Image.BytesFetched, ms.Image.Hits, ms.Image.Misses
				is.Requests, is.Retries, is.VerifyFailures = ms.Image.Requests, ms.Image.Retries, ms.Image.VerifyFailures
				p := ms.Prefetch
				is.PrefetchPhase, is.TraceDigest, is.TraceChunks, is.PrefetchError = p.Phase, p.Trace, int32(p.TraceChunks), p.Error
				is.CachedBytes = ms.Image.Cached
				is.ReadsInFlight, is.ReadsStuck = int32(ms.Server.InFlight), int32(ms.Server.Stuck)
				is.OldestReadMs = ms.Server.Oldest.Milliseconds()
				is.QueueRequests = ms.Server.Queues
				for _, h := range ms.Image.Hosts {
					is.Hosts = append(is.Hosts, &fetcherv1.RegistryHost{Host: h.Host, State: h.State, FailedFast: h.FailedFast,
						Opened: h.Opened, LastError: h.LastError})
				}
			}
		}
		out.Images = append(out.Images, is)
	}
	return out, nil
}

func info(st *mounts.State) *fetcherv1.MountInfo {
	mi := &fetcherv1.MountInfo{Ref: st.Source.Ref, Dir: st.Dir, Pid: int32(st.PID), Serving: st.Serving,
		StartedUnixMs: st.Started.UnixMilli(), IndexDigest: st.Source.IndexDigest}
	if m := st.Mount; m != nil {
		mi.Fs, mi.Attach, mi.Device = m.FS, m.Attach, m.Source
	}
	return mi
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, mounts.ErrNotMounted):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, mounts.ErrBusy):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// Recover hands every kernel NBD mount whose server died to a new server;
// nbdfuse mounts whose server died cannot be recovered and are reported.
func Recover(ctx context.Context, m *mounts.Manager) {
	sts, err := m.List()
	if err != nil {
		slog.Warn("recover: list mounts", "err", err)
		return
	}
	for _, st := range sts {
		switch {
		case st.Serving:
			slog.Info("recover: mount still served", "dir", st.Dir, "pid", st.PID)
		case st.Mount != nil && st.Mount.Recoverable():
			if _, err := m.Reattach(ctx, st.Dir); err != nil {
				slog.Error("recover: reattach", "dir", st.Dir, "err", err)
			} else {
				slog.Info("recover: reattached", "dir", st.Dir, "device", st.Mount.Source)
			}
		default:
			slog.Warn("recover: server of an nbdfuse mount died; reads fail until it is unmounted", "dir", st.Dir)
		}
	}
}

// Listen opens a daemon's unix socket (the fetcher's or the
// snapshotter's), replacing a stale one, for root only, or with group
// set for that group too; it fails when another daemon answers on it.
func Listen(address, group string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return nil, err
	}
	if Running(address) {
		return nil, fmt.Errorf("listen %s: another daemon answers there", address)
	}
	os.Remove(address)
	return blockdev.ListenUnix(address, group)
}

// NewGRPCServer returns a gRPC server with s registered.
func NewGRPCServer(s *Server) *grpc.Server {
	g := grpc.NewServer()
	fetcherv1.RegisterFetcherServer(g, s)
	return g
}

// Dial connects to the daemon at address. It does not wait for the
// daemon: the first call fails when none runs.
func Dial(address string) (fetcherv1.FetcherClient, *grpc.ClientConn, error) {
	cc, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return fetcherv1.NewFetcherClient(cc), cc, nil
}

// Running reports whether a daemon answers at address.
func Running(address string) bool {
	c, err := net.DialTimeout("unix", address, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
