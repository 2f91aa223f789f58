// Command delayproxy is an HTTP reverse proxy that holds every request for
// a fixed delay before forwarding it, and optionally caps how fast bodies
// flow back: a registry on loopback made to look one round trip further
// away and as fast as a real one, for benchmarks (this kernel has no
// netem).
//
//	delayproxy -listen 127.0.0.1:5001 -target 127.0.0.1:5000 -delay 2ms \
//	    -conn-rate 64MiB -rate 512MiB
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/lazyblk/lazyblk/config"
)

// piece is the most a body write sends before it is paced again.
const piece = 64 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	target := flag.String("target", "", "host:port to forward to")
	delay := flag.Duration("delay", 5*time.Millisecond, "added to every request")
	total := flag.String("rate", "0", "bytes per second across all responses, like 512MiB (0: no cap)")
	perConn := flag.String("conn-rate", "0", "bytes per second per response, like 64MiB (0: no cap)")
	flag.Parse()
	if *target == "" {
		log.Fatal("usage: delayproxy -listen ADDR -target HOST:PORT [-delay D] [-rate R] [-conn-rate R]")
	}
	totalRate, err := config.ParseLimit(*total)
	if err != nil {
		log.Fatal("-rate: ", err)
	}
	connRate, err := config.ParseLimit(*perConn)
	if err != nil {
		log.Fatal("-conn-rate: ", err)
	}
	var shared *pacer // the pacer of all responses together, if any
	if totalRate > 0 {
		shared = newPacer(totalRate)
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: *target})
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 64}
	log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(*delay) // the added latency itself, not synchronisation
		pw := &pacedWriter{ResponseWriter: w, ctx: r.Context()}
		if shared != nil {
			pw.pacers = append(pw.pacers, shared)
		}
		if connRate > 0 {
			pw.pacers = append(pw.pacers, newPacer(connRate))
		}
		proxy.ServeHTTP(pw, r)
	})))
}

// pacedWriter lets a body through no faster than its limiters allow.
type pacedWriter struct {
	http.ResponseWriter
	ctx    context.Context
	pacers []*pacer
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n := min(len(b)-done, piece)
		for _, pc := range p.pacers {
			if err := pc.wait(p.ctx, n); err != nil {
				return done, err
			}
		}
		m, err := p.ResponseWriter.Write(b[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Flush passes flushes on, so streamed bodies are not held back.
func (p *pacedWriter) Flush() {
	if f, ok := p.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
