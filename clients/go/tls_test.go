//go:build unix

package leasehold

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Config.Token and Config.CAFile against a cluster with [tls] and [auth]: https with a
// CA of the test's own, and bearer tokens.
func TestTokenAndCAFileReachASecuredCluster(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile, pool := makeCertificates(t, dir)
	token := "lh_test_" + randomHex(16)
	digest := sha256.Sum256([]byte(token))
	tokens := filepath.Join(dir, "tokens.toml")
	entry := fmt.Sprintf("[[token]]\nname = \"tester\"\nsha256 = %q\nrole = \"admin\"\nprefixes = [\"\"]\n", hex.EncodeToString(digest[:]))
	if err := os.WriteFile(tokens, []byte(entry), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := ownCluster(t, clusterOptions{
		args: []string{"--tls-cert", certFile, "--tls-key", keyFile, "--tls-ca", caFile, "--auth-tokens-file", tokens},
		ca:   pool, token: token,
	})
	ctx := ctxFor(t, 30*time.Second)
	key := testKey(t, "secured")

	c := newClientWith(t, Config{Endpoints: cl.urls(), Token: token, CAFile: caFile})
	lock, err := c.AcquireLock(ctx, key, WithLeaseDuration(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if held, err := c.Has(ctx, key); err != nil || !held {
		t.Fatalf("Has = %v, %v", held, err)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// Without the token, or with another: 401 from the server, not retried elsewhere.
	for _, tok := range []string{"", "lh_wrong"} {
		anon, err := New(Config{Endpoints: cl.urls(), Token: tok, CAFile: caFile})
		if err != nil {
			t.Fatal(err)
		}
		_, err = anon.Has(ctx, key)
		if e := asError(t, err); !errors.Is(err, ErrUnauthorized) || e.Status != 401 {
			t.Fatalf("token %q: %v", tok, err)
		}
	}
	// Without the CA the nodes' certificates are not trusted: no endpoint can serve.
	untrusting, err := New(Config{Endpoints: cl.urls(), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	_, err = untrusting.Has(ctx, key)
	var unknownCA x509.UnknownAuthorityError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &unknownCA) {
		t.Fatalf("without the CA: %v", err)
	}
}

// makeCertificates writes a CA and a certificate for every node (127.0.0.1, server and
// client use: the nodes also authenticate each other with it) into dir.
func makeCertificates(t *testing.T, dir string) (caFile, certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, kind string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	now := time.Now()
	caKey := newKey()
	caTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leasehold test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	nodeKey := newKey()
	nodeTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	nodeDER, err := x509.CreateCertificate(rand.Reader, nodeTemplate, ca, &nodeKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return write("ca.crt", "CERTIFICATE", caDER), write("node.crt", "CERTIFICATE", nodeDER), write("node.key", "PRIVATE KEY", keyDER), pool
}
