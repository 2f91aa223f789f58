package fetcherd

import (
	"context"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	fetcherv1 "github.com/lazyblk/lazyblk/api/fetcher/v1"
)

// keptFallbacks is how many of the latest fallbacks List returns.
const keptFallbacks = 16

// fallbacks are the layers the snapshotter reported it could not mount
// lazily: the latest, and a count per reason.
type fallbacks struct {
	mu     sync.Mutex
	latest []*fetcherv1.Fallback
	counts map[string]int64
}

// ReportFallback records a layer that fell back to a full download.
func (s *Server) ReportFallback(_ context.Context, f *fetcherv1.Fallback) (*fetcherv1.ReportFallbackResponse, error) {
	if f.Layer == "" || f.Reason == "" {
		return nil, status.Error(codes.InvalidArgument, "a fallback needs its layer and reason")
	}
	s.registry().fallbacks.WithLabelValues(f.Reason).Inc()
	slog.Warn("a lazyblk layer was downloaded whole", "layer", f.Layer, "ref", f.Ref, "reason", f.Reason, "why", f.Message)
	fb := &s.fallbacks
	fb.mu.Lock()
	defer fb.mu.Unlock()
	if fb.counts == nil {
		fb.counts = map[string]int64{}
	}
	fb.counts[f.Reason]++
	f = proto.Clone(f).(*fetcherv1.Fallback)
	f.Count = fb.counts[f.Reason]
	// What a peer sent is kept: bounded.
	f.Layer, f.Ref, f.Reason, f.Message = clip(f.Layer, 256), clip(f.Ref, 512), clip(f.Reason, 32), clip(f.Message, 2048)
	fb.latest = append(fb.latest, f)
	if len(fb.latest) > keptFallbacks {
		fb.latest = fb.latest[len(fb.latest)-keptFallbacks:]
	}
	return &fetcherv1.ReportFallbackResponse{}, nil
}

// latestFallbacks returns copies of the latest fallbacks, oldest first.
func (s *Server) latestFallbacks() []*fetcherv1.Fallback {
	fb := &s.fallbacks
	fb.mu.Lock()
	defer fb.mu.Unlock()
	out := make([]*fetcherv1.Fallback, len(fb.latest))
	for i, f := range fb.latest {
		out[i] = proto.Clone(f).(*fetcherv1.Fallback)
	}
	return out
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
