package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lazyblk/lazyblk/internal/testutil"
)

// testCA is a certificate authority for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate signed by ca and its key into dir, named as
// libnbd's and QEMU's x509 directories want them (PREFIX-cert.pem,
// PREFIX-key.pem), with ca-cert.pem beside them.
func (ca *testCA) issue(t *testing.T, dir, prefix string, server bool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "lazyblk test " + prefix},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		prefix + "-cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		prefix + "-key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}),
		"ca-cert.pem":        ca.pem,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestServeTLS: an export beyond loopback is not open to anyone. Plain
// NBD on 0.0.0.0 is refused without --insecure. With a certificate, key
// and client CA, libnbd (nbdcopy) and QEMU (qemu-img) with a client
// certificate of that CA read the image's exact bytes over TLS; a plain
// client, a client without a certificate and one whose certificate
// another CA signed are all refused. A unix export is 0600, or 0660 with
// --socket-group.
func TestServeTLS(t *testing.T) {
	testutil.Require(t, false, "nbdcopy", "nbdinfo", "qemu-img")
	host := testutil.GGCRRegistry(t)
	ref := host + "/tls/img:v1"
	_, image := testutil.BlockImage(t, ref, 1<<20)

	_, stderr, code := run(t, "serve", "--plain-http", "--listen", "tcp:0.0.0.0:0", ref)
	if code != 2 || !strings.Contains(stderr, "--tls-cert") || !strings.Contains(stderr, "--insecure") {
		t.Errorf("plain NBD on 0.0.0.0: exit %d, %q; want exit 2 naming --tls-cert and --insecure", code, stderr)
	}
	insecure, _ := startServe(t, lazyblk, "--plain-http", "--insecure", "--listen", "tcp:0.0.0.0:0", ref)
	insecure.Process.Signal(os.Interrupt)
	insecure.Wait()

	ca, stranger := newTestCA(t, "lazyblk test CA"), newTestCA(t, "another CA")
	srvDir, client, strangerDir, noCert := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	ca.issue(t, srvDir, "server", true)
	ca.issue(t, client, "client", false)
	stranger.issue(t, strangerDir, "client", false)
	os.WriteFile(filepath.Join(strangerDir, "ca-cert.pem"), ca.pem, 0o600) // trusts the server, is not trusted
	os.WriteFile(filepath.Join(noCert, "ca-cert.pem"), ca.pem, 0o600)

	_, lines := startServe(t, lazyblk, "--plain-http", "--listen", "tcp:127.0.0.1:0",
		"--tls-cert", filepath.Join(srvDir, "server-cert.pem"), "--tls-key", filepath.Join(srvDir, "server-key.pem"),
		"--tls-client-ca", filepath.Join(srvDir, "ca-cert.pem"), ref)
	port := regexp.MustCompile(`:(\d+)$`).FindStringSubmatch(strings.TrimSpace(lines.Text()))
	if port == nil {
		t.Fatalf("no port in %q", lines.Text())
	}
	uri := "nbds://localhost:" + port[1] + "/?tls-certificates="

	out := filepath.Join(t.TempDir(), "libnbd.raw")
	if b, err := exec.Command("nbdcopy", uri+client, out).CombinedOutput(); err != nil {
		t.Errorf("nbdcopy over TLS with a client certificate: %v\n%s", err, b)
	} else if got, _ := os.ReadFile(out); !bytes.Equal(got, image) {
		t.Errorf("nbdcopy over TLS read %d bytes, not the image's %d", len(got), len(image))
	}
	qout := filepath.Join(t.TempDir(), "qemu.raw")
	qemu := exec.Command("qemu-img", "convert", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+client,
		"--image-opts", "driver=nbd,host=localhost,port="+port[1]+",tls-creds=tls0", "-O", "raw", qout)
	if b, err := qemu.CombinedOutput(); err != nil {
		t.Errorf("qemu-img over TLS with a client certificate: %v\n%s", err, b)
	} else if got, _ := os.ReadFile(qout); !bytes.Equal(got, image) {
		t.Errorf("qemu-img over TLS read %d bytes, not the image's %d", len(got), len(image))
	}
	for name, u := range map[string]string{
		"plain NBD":                        "nbd://localhost:" + port[1] + "/",
		"TLS without a client certificate": uri + noCert,
		"a certificate of another CA":      uri + strangerDir,
	} {
		if b, err := exec.Command("nbdinfo", "--size", u).CombinedOutput(); err == nil {
			t.Errorf("%s: nbdinfo was answered (%s), want a refusal", name, strings.TrimSpace(string(b)))
		}
	}

	sock := filepath.Join(t.TempDir(), "export.sock")
	for _, c := range []struct {
		args []string
		mode os.FileMode
	}{{nil, 0o600}, {[]string{"--socket-group", "root"}, 0o660}} {
		cmd, _ := startServe(t, lazyblk, append(c.args, "--plain-http", "--listen", "unix:"+sock, ref)...)
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != c.mode {
			t.Errorf("serve %v --listen unix: socket mode %v (%v), want %v", c.args, fi.Mode().Perm(), err, c.mode)
		}
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}
}
