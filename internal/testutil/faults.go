package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is what FaultProxy does to one blob range request.
type Fault int

const (
	Pass      Fault = iota
	Status503       // answer 503
	Reset           // close the connection without a response
	Truncate        // send the headers and half the body, then close
	Flip            // flip one byte in the middle of the body
	Hang            // never answer (until the client gives up)
	Slow            // add 20 ms before answering
)

// FaultProxy forwards to the registry at host and lets decide pick a fault
// for every range request of a blob (n counts them from 0); manifests and
// whole-blob reads pass untouched. It returns the proxy's host:port.
func FaultProxy(t testing.TB, host string, decide func(n int64, r *http.Request) Fault) string {
	t.Helper()
	srv := httptest.NewServer(faultHandler(t, host, decide, false))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// FaultProxyAll is FaultProxy that lets decide pick a fault for every
// request: manifests, whole blobs (the chunk index) and ranges alike.
func FaultProxyAll(t testing.TB, host string, decide func(n int64, r *http.Request) Fault) string {
	t.Helper()
	srv := httptest.NewServer(faultHandler(t, host, decide, true))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TLSFaultProxy is FaultProxy over HTTPS with a certificate of its own,
// which caPEM (a PEM file in a test directory) lets clients trust.
func TLSFaultProxy(t testing.TB, host string, decide func(n int64, r *http.Request) Fault) (proxy, caPEM string) {
	t.Helper()
	proxy, caPEM, _, _ = tlsFaultProxy(t, host, decide, false)
	return proxy, caPEM
}

// MTLSFaultProxy is TLSFaultProxy that also demands a client certificate:
// certPEM and keyPEM are one it accepts.
func MTLSFaultProxy(t testing.TB, host string, decide func(n int64, r *http.Request) Fault) (proxy, caPEM, certPEM, keyPEM string) {
	t.Helper()
	return tlsFaultProxy(t, host, decide, true)
}

func tlsFaultProxy(t testing.TB, host string, decide func(n int64, r *http.Request) Fault, clientAuth bool) (proxy, caPEM, certPEM, keyPEM string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(faultHandler(t, host, decide, false))
	dir := t.TempDir()
	if clientAuth {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lazyblk test client"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM = filepath.Join(dir, "client.cert"), filepath.Join(dir, "client.key")
		writePEM(t, certPEM, "CERTIFICATE", der)
		writePEM(t, keyPEM, "EC PRIVATE KEY", kb)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caPEM = filepath.Join(dir, "ca.pem")
	writePEM(t, caPEM, "CERTIFICATE", srv.Certificate().Raw)
	return strings.TrimPrefix(srv.URL, "https://"), caPEM, certPEM, keyPEM
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func faultHandler(t testing.TB, host string, decide func(n int64, r *http.Request) Fault, all bool) http.Handler {
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // "context canceled" for every request a client gave up on
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !all && (!strings.Contains(r.URL.Path, "/blobs/") || r.Header.Get("Range") == "") {
			rp.ServeHTTP(w, r)
			return
		}
		switch f := decide(n.Add(1)-1, r); f {
		case Status503:
			http.Error(w, "injected", http.StatusServiceUnavailable)
		case Reset:
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			conn.Close()
		case Hang:
			<-r.Context().Done()
		case Slow:
			time.Sleep(20 * time.Millisecond) // injected latency, not synchronisation
			rp.ServeHTTP(w, r)
		case Truncate, Flip:
			rec := httptest.NewRecorder()
			rp.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			if f == Truncate {
				// Fewer bytes than Content-Length: net/http closes the
				// connection and the client sees an unexpected EOF.
				w.Write(body[:len(body)/2])
				return
			}
			if len(body) > 0 {
				body[len(body)/2] ^= 0xff
			}
			w.Write(body)
		default:
			rp.ServeHTTP(w, r)
		}
	})
}

// TokenProxy forwards to the registry at host but demands bearer tokens
// from its own token endpoint, each good for uses requests: a registry
// whose tokens expire while reads go on. issued counts tokens handed out.
func TokenProxy(t testing.TB, host string, uses int64) (proxy string, issued *atomic.Int64) {
	t.Helper()
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	issued = &atomic.Int64{}
	var srv *httptest.Server
	var tokens sync.Map // token -> *atomic.Int64 uses left; each stays valid for its uses
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tok := "tok-" + strings.Repeat("x", int(issued.Add(1)))
			left := &atomic.Int64{}
			left.Store(uses)
			tokens.Store(tok, left)
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"token":"` + tok + `","expires_in":3600}`))
			return
		}
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		v, ok := tokens.Load(tok)
		if !ok || v.(*atomic.Int64).Add(-1) < 0 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="lazyblk-test",scope="repository:img:pull"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`, http.StatusUnauthorized)
			return
		}
		r.Header.Del("Authorization")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), issued
}

// RedirectProxy answers every blob range request of the registry at host
// with a 307 to a separate "blob storage" server carrying a signed-URL
// style query. Blob storage answers 403 to the first expired requests
// (a signature that expired) and serves the bytes otherwise.
func RedirectProxy(t testing.TB, host string, expired int64) (proxy string, redirects *atomic.Int64) {
	t.Helper()
	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	var denied atomic.Int64
	redirects = &atomic.Int64{}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("credentials sent to blob storage")
		}
		if denied.Add(1) <= expired {
			http.Error(w, "Request has expired", http.StatusForbidden)
			return
		}
		r.URL.RawQuery = ""
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(storage.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") && r.Header.Get("Range") != "" {
			redirects.Add(1)
			http.Redirect(w, r, storage.URL+r.URL.Path+"?X-Signature=secret&expires=soon", http.StatusTemporaryRedirect)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), redirects
}

// HostsDir writes conf as containerd's hosts.toml for registry (host:port)
// in a new directory laid out like /etc/containerd/certs.d, and returns it.
func HostsDir(t testing.TB, registry, conf string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, registry), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, registry, "hosts.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}
