// Command delayproxy is an HTTP reverse proxy that holds every request for
// a fixed delay before forwarding it: a registry on loopback made to look
// one round trip further away, for benchmarks (this kernel has no netem).
//
//	delayproxy -listen 127.0.0.1:5001 -target 127.0.0.1:5000 -delay 5ms
package main

import (
	"flag"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	target := flag.String("target", "", "host:port to forward to")
	delay := flag.Duration("delay", 5*time.Millisecond, "added to every request")
	flag.Parse()
	if *target == "" {
		log.Fatal("usage: delayproxy -listen ADDR -target HOST:PORT [-delay D]")
	}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: *target})
	proxy.Transport = &http.Transport{MaxIdleConnsPerHost: 64}
	log.Fatal(http.ListenAndServe(*listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(*delay) // the added latency itself, not synchronisation
		proxy.ServeHTTP(w, r)
	})))
}
