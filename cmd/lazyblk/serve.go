package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/lazyblk/lazyblk/blockdev"
	"github.com/lazyblk/lazyblk/lazy"
	"github.com/lazyblk/lazyblk/mounts"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve a block image as an NBD export (for qemu, nbd-client, nbdfuse or a microVM host)",
		ArgsUsage: "REF",
		Description: `Serves REF read-only over NBD until interrupted. The export is named REF and is
also the default export (empty name). Chunks are fetched on first read.

An image may be private: a unix socket is made 0600 (0660 with --socket-group),
and listening on an address other than loopback needs TLS — clients start it
with NBD_OPT_STARTTLS before anything else (libnbd's nbds:// URIs, QEMU's
tls-creds) — or an explicit --insecure. With --tls-client-ca, clients must
also present a certificate signed by that CA.

Examples:
  lazyblk serve --listen unix:/run/app.sock registry.local/app:v1-lazyblk
  nbdinfo 'nbd+unix:///?socket=/run/app.sock'
  lazyblk serve --listen tcp:127.0.0.1:10809 --cache-dir /var/cache/lazyblk REF
  qemu-system-x86_64 ... -drive file=nbd://127.0.0.1:10809,format=raw,readonly=on
  lazyblk serve --listen tcp:0.0.0.0:10809 --tls-cert server-cert.pem --tls-key server-key.pem \
      --tls-client-ca ca-cert.pem REF
  nbdinfo 'nbds://node1:10809/?tls-certificates=/etc/pki/lazyblk'`,
		Flags: append(sourceFlags(),
			&cli.StringFlag{Name: "listen", Required: true, Usage: "unix:PATH or tcp:HOST:PORT"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM server certificate: clients must start TLS"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM key of --tls-cert"},
			&cli.StringFlag{Name: "tls-client-ca", Usage: "PEM CA certificates: clients must present a certificate they signed"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow plain NBD on an address other than loopback (anyone who reaches it reads the image)"},
			&cli.StringFlag{Name: "socket-group", Usage: "unix:PATH: this group may connect too (mode 0660 instead of 0600)"},
		),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if c.NArg() != 1 {
		return cli.Exit("serve needs REF (see lazyblk serve --help)", 2)
	}
	src, err := sourceFromFlags(c)
	if err != nil {
		return err
	}
	network, addr, ok := strings.Cut(c.String("listen"), ":")
	if !ok || addr == "" || (network != "unix" && network != "tcp") {
		return cli.Exit(fmt.Sprintf("--listen %q: want unix:PATH or tcp:HOST:PORT", c.String("listen")), 2)
	}
	opts := []blockdev.Option{blockdev.WithLogger(slog.Default())}
	tlsCfg, err := serveTLS(c, network, addr)
	if err != nil {
		return err
	}
	if tlsCfg != nil {
		opts = append(opts, blockdev.WithTLS(tlsCfg))
	}
	img, err := lazy.Open(c.Context, src.Ref, lazyOptions(src)...)
	if err != nil {
		return err
	}
	defer img.Close()
	var l net.Listener
	if network == "unix" {
		l, err = blockdev.ListenUnix(addr, c.String("socket-group"))
	} else {
		l, err = net.Listen(network, addr)
	}
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if network == "unix" {
		defer os.Remove(addr)
	}
	fmt.Fprintf(c.App.ErrWriter, "lazyblk: serving %s (%d bytes) on %s:%s\n", src.Ref, img.Size(), network, l.Addr())
	st, err := img.Serve(c.Context, l, opts...)
	fmt.Fprintf(c.App.ErrWriter, "lazyblk: served %d requests, %d bytes, %d errors\n", st.Requests, st.Bytes, st.Errors)
	return err
}

// serveTLS reads the TLS flags: the server's configuration, or nil for
// plain NBD, which a TCP address other than loopback only gets with
// --insecure.
func serveTLS(c *cli.Context, network, addr string) (*tls.Config, error) {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-client-ca")
	if cert == "" && key == "" && ca == "" {
		if network == "tcp" && !loopback(addr) && !c.Bool("insecure") {
			return nil, cli.Exit(fmt.Sprintf("--listen %s: serving plain NBD beyond loopback lets anyone who reaches it "+
				"read the image; give --tls-cert and --tls-key (clients then use TLS), or --insecure", c.String("listen")), 2)
		}
		return nil, nil
	}
	if cert == "" || key == "" {
		return nil, cli.Exit("--tls-cert and --tls-key go together", 2)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("--tls-cert %s, --tls-key %s: %v", cert, key, err), 2)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("--tls-client-ca: %v", err), 2)
		}
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, cli.Exit(fmt.Sprintf("--tls-client-ca %s: no PEM certificate in it", ca), 2)
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// loopback says whether a TCP listen address only accepts connections
// from this host.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// lazyOptions carries the source flags over to package lazy.
func lazyOptions(src mounts.Source) []lazy.Option {
	opts := []lazy.Option{lazy.WithHostsDir(src.HostsDir), lazy.WithTimeouts(src.AttemptTimeout, src.ReadTimeout)}
	if src.PlainHTTP {
		opts = append(opts, lazy.WithPlainHTTP())
	}
	if len(src.CacheDirs) > 0 {
		opts = append(opts, lazy.WithCache(src.CacheDirs, src.CacheSize))
	}
	return opts
}
