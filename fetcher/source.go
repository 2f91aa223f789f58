package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// ErrShortBody reports a response that ended before the range it promised.
var ErrShortBody = errors.New("fetcher: truncated response body")

// HTTPError is a failed blob request. URL carries no credentials or query
// string (redirect URLs to blob storage carry signatures there).
type HTTPError struct {
	Status int
	URL    string
	// Redirected: the answer came from where the registry redirected to
	// (blob storage), not from the registry itself.
	Redirected bool
}

func (e *HTTPError) Error() string {
	via := ""
	if e.Redirected {
		via = " (redirected)"
	}
	return fmt.Sprintf("fetcher: GET %s%s: %d %s", e.URL, via, e.Status, http.StatusText(e.Status))
}

// retryable: server trouble, throttling, and a 403 from blob storage after
// a redirect (the signed URL expired: asking the registry again gets a
// fresh one). Anything else 4xx is final.
func (e *HTTPError) retryable() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout ||
		e.Status == http.StatusForbidden && e.Redirected
}

func redact(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.Fragment = nil, "", ""
	return c.String()
}

// source reads byte ranges of an image's blobs and says whether a mirror
// served them. originOnly skips mirrors: the refetch of a chunk that
// failed verification goes to the origin.
type source interface {
	readRange(ctx context.Context, blob v1.Hash, p []byte, off int64, originOnly bool) (mirror bool, err error)
	close() error
}

// registrySource reads a blob with closed HTTP range requests. Its client
// carries go-containerregistry's auth transport: credentials from the
// docker keychain, bearer tokens refreshed when the registry answers 401
// (so a token expiring mid-run does not break reads), and no credentials
// sent along redirects to other hosts.
//
// Mirrors (pull-through caches, P2P agents) are tried first, in order; a
// mirror that fails sends the read on to the next and finally the origin.
type registrySource struct {
	mirrors []*endpoint
	origin  *endpoint
	pool    *http.Transport // the image's own connections, unless WithTransport
}

// endpoint is one host serving the repository's blobs.
type endpoint struct {
	client  *http.Client
	blobs   *url.URL // the repository's blobs/ path: a blob is blobs + digest
	host    string
	breaker *breaker // the host's, shared by every image of the process
}

// newRegistrySource reads blobs from l's registry, after the mirrors. A
// mirror that cannot be set up (unreachable, no auth endpoint) is skipped
// with a warning: mirrors are an optimisation, never a reason to fail.
func newRegistrySource(ctx context.Context, l Location, o options) (*registrySource, error) {
	repo := l.Ref.Context()
	base := o.transport
	var pool *http.Transport
	if base == nil {
		pool = http.DefaultTransport.(*http.Transport).Clone()
		pool.MaxIdleConnsPerHost = o.connections + o.background
		base = pool
	}
	mirrors := mirrorHosts(o.mirrors, base)
	if o.hostsDir != "" {
		more, originBase, err := configuredHosts(ctx, o.hostsDir, repo.Registry, base, o.connections+o.background)
		if err != nil {
			return nil, err
		}
		mirrors, base = append(mirrors, more...), originBase
	}
	origin, err := newEndpoint(ctx, repo, host{scheme: repo.Registry.Scheme(), host: repo.RegistryStr(), path: "/v2", base: base})
	if err != nil {
		return nil, err
	}
	s := &registrySource{origin: origin, pool: pool}
	for _, h := range mirrors {
		e, err := newEndpoint(ctx, repo, h)
		if err != nil {
			logSkippedMirror(o.log, h, err)
			continue
		}
		s.mirrors = append(s.mirrors, e)
	}
	return s, nil
}

// newEndpoint sets up h for repo's blobs: credentials from the docker
// keychain for h's host, and a token for pulling repo.
func newEndpoint(ctx context.Context, repo name.Repository, h host) (*endpoint, error) {
	var opts []name.Option
	if h.scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(h.host, opts...)
	if err != nil {
		return nil, fmt.Errorf("fetcher: registry host %q: %w", h.host, err)
	}
	auth, err := authn.DefaultKeychain.Resolve(reg)
	if err != nil {
		return nil, fmt.Errorf("fetcher: credentials for %s: %w", reg.RegistryStr(), err)
	}
	scoped := reg.Repo(repo.RepositoryStr())
	tr, err := transport.NewWithContext(ctx, reg, auth, h.base, []string{scoped.Scope(transport.PullScope)})
	if err != nil {
		return nil, fmt.Errorf("fetcher: %s: %w", reg.RegistryStr(), err)
	}
	u := &url.URL{Scheme: h.scheme, Host: h.host, Path: fmt.Sprintf("%s/%s/blobs/", h.path, repo.RepositoryStr())}
	return &endpoint{client: &http.Client{Transport: tr}, blobs: u, host: u.Host, breaker: breakerFor(u.Host)}, nil
}

// readRange tries the mirrors, then the origin. A mirror gets at most
// half of what is left of the attempt, so one that stalls leaves the
// origin time to answer; a mirror whose breaker is open is passed over at
// once.
func (s *registrySource) readRange(ctx context.Context, blob v1.Hash, p []byte, off int64, originOnly bool) (bool, error) {
	if !originOnly {
		for _, m := range s.mirrors {
			mctx, cancel := ctx, context.CancelFunc(func() {})
			if deadline, ok := ctx.Deadline(); ok {
				mctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(deadline)/2))
			}
			err := m.readRange(mctx, blob, p, off)
			cancel()
			if err == nil || ctx.Err() != nil {
				return err == nil, err
			}
		}
	}
	return false, s.origin.readRange(ctx, blob, p, off)
}

func (s *registrySource) close() error {
	if s.pool != nil {
		s.pool.CloseIdleConnections()
	}
	return nil
}

// readRange reads p at off from the host, unless its breaker is open;
// when the breaker is due for a probe, a one-byte range asks the host
// first, so the probe is short whatever p is.
func (s *endpoint) readRange(ctx context.Context, blob v1.Hash, p []byte, off int64) error {
	probe, err := s.breaker.allow(ctx)
	if err != nil {
		return err
	}
	if probe {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := s.get(pctx, blob, make([]byte, 1), off)
		cancel()
		s.breaker.done(true, err)
		if hostFailure(err) {
			return fmt.Errorf("%w: %s: probe: %v", ErrHostDown, s.host, err)
		}
	}
	err = s.get(ctx, blob, p, off)
	s.breaker.done(false, err)
	return err
}

func (s *endpoint) get(ctx context.Context, blob v1.Hash, p []byte, off int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.blobs.JoinPath(blob.String()).String(), nil)
	if err != nil {
		return err
	}
	// Closed ranges only: go-containerregistry's registry answers open and
	// suffix ranges with 416.
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1))
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	where := redact(resp.Request.URL)
	redirected := resp.Request.URL.Host != s.host
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off, len(p)); err != nil {
			return err
		}
	case http.StatusOK:
		// A server that ignores Range sends the whole blob: skip to off.
		if _, err := io.CopyN(io.Discard, resp.Body, off); err != nil {
			return fmt.Errorf("%w: %v", ErrShortBody, err)
		}
	default:
		return &HTTPError{Status: resp.StatusCode, URL: where, Redirected: redirected}
	}
	if _, err := io.ReadFull(resp.Body, p); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrShortBody, where, err)
	}
	return nil
}

// checkContentRange insists the server sent exactly the range asked for.
func checkContentRange(h string, off int64, n int) error {
	var start, end int64
	spec, ok := strings.CutPrefix(h, "bytes ")
	if ok {
		rng, _, _ := strings.Cut(spec, "/")
		a, b, found := strings.Cut(rng, "-")
		var err1, err2 error
		start, err1 = strconv.ParseInt(a, 10, 64)
		end, err2 = strconv.ParseInt(b, 10, 64)
		ok = found && err1 == nil && err2 == nil
	}
	if !ok || start != off || end != off+int64(n)-1 {
		return fmt.Errorf("fetcher: Content-Range %q, asked for bytes %d-%d", h, off, off+int64(n)-1)
	}
	return nil
}

// layoutSource reads the blobs of an OCI image layout on disk, each file
// opened on first use.
type layoutSource struct {
	dir   string
	mu    sync.Mutex // guards files
	files map[v1.Hash]*os.File
}

func newLayoutSource(l Location) *layoutSource {
	return &layoutSource{dir: l.Dir, files: map[v1.Hash]*os.File{}}
}

func (s *layoutSource) readRange(_ context.Context, blob v1.Hash, p []byte, off int64, _ bool) (bool, error) {
	f, err := s.open(blob)
	if err != nil {
		return false, err
	}
	_, err = f.ReadAt(p, off)
	return false, err
}

func (s *layoutSource) open(blob v1.Hash) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f, ok := s.files[blob]; ok {
		return f, nil
	}
	f, err := os.Open(filepath.Join(s.dir, "blobs", blob.Algorithm, blob.Hex))
	if err != nil {
		return nil, fmt.Errorf("fetcher: oci:%s: %w", s.dir, err)
	}
	s.files[blob] = f
	return f, nil
}

func (s *layoutSource) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
