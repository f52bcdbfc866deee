package main

// The cluster's PKI: one CA that signs the API server's serving certificate and
// the client certificates, plus an RSA key pair that signs ServiceAccount tokens.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type certAuthority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newCA(commonName string) (*certAuthority, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return &certAuthority{cert: cert, key: key}, pemBlock("CERTIFICATE", der), nil
}

// issue signs a leaf certificate. Client certificates carry the user in CN and
// the groups in O, which is how the API server's x509 authenticator reads them.
func (ca *certAuthority) issue(commonName string, orgs []string, ips []net.IP, dnsNames []string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: commonName, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER), nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

// pki holds the paths of every file the components are started with.
type pki struct {
	caCert, caKey             string
	servingCert, servingKey   string
	adminCert, adminKey       string
	kcmCert, kcmKey           string
	kubeletClientCert         string // the API server's client certificate towards kubelets
	kubeletClientKey          string
	saSigningKey, saPublicKey string
}

// pkiPaths names the files writePKI writes into dir.
func pkiPaths(dir string) *pki {
	return &pki{
		caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		servingCert: filepath.Join(dir, "apiserver.crt"), servingKey: filepath.Join(dir, "apiserver.key"),
		adminCert: filepath.Join(dir, "admin.crt"), adminKey: filepath.Join(dir, "admin.key"),
		kcmCert: filepath.Join(dir, "controller-manager.crt"), kcmKey: filepath.Join(dir, "controller-manager.key"),
		kubeletClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"), kubeletClientKey: filepath.Join(dir, "apiserver-kubelet-client.key"),
		saSigningKey: filepath.Join(dir, "sa.key"), saPublicKey: filepath.Join(dir, "sa.pub"),
	}
}

// loadCA reads the cluster's CA back, for the certificates a node needs.
func loadCA(p *pki) (*certAuthority, error) {
	certPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(p.caKey)
	if err != nil {
		return nil, err
	}
	certBlock, _ := pem.Decode(certPEM)
	keyBlock, _ := pem.Decode(keyPEM)
	if certBlock == nil || keyBlock == nil {
		return nil, fmt.Errorf("%s or %s holds no PEM block", p.caCert, p.caKey)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s is not a signing key", p.caKey)
	}
	return &certAuthority{cert: cert, key: signer}, nil
}

func writePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := pkiPaths(dir)
	ca, caPEM, err := newCA("teamaccess-local-cluster-ca")
	if err != nil {
		return nil, err
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{p.caCert: caPEM, p.caKey: pemBlock("PRIVATE KEY", caKeyDER)}

	type leaf struct {
		certPath, keyPath string
		cn                string
		orgs              []string
		ips               []net.IP
		dns               []string
		usage             x509.ExtKeyUsage
	}
	leaves := []leaf{
		{p.servingCert, p.servingKey, "kube-apiserver", nil,
			[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
			[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, x509.ExtKeyUsageServerAuth},
		{p.adminCert, p.adminKey, "admin", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth},
		{p.kcmCert, p.kcmKey, "system:kube-controller-manager", nil, nil, nil, x509.ExtKeyUsageClientAuth},
		// kubectl logs and exec go through the API server to the kubelet, which
		// authenticates this certificate and asks the API server whether it may.
		{p.kubeletClientCert, p.kubeletClientKey, "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth},
	}
	for _, l := range leaves {
		c, k, err := ca.issue(l.cn, l.orgs, l.ips, l.dns, l.usage)
		if err != nil {
			return nil, fmt.Errorf("issuing certificate for %s: %w", l.cn, err)
		}
		files[l.certPath], files[l.keyPath] = c, k
	}

	// ServiceAccount tokens are signed with RSA, as kubeadm does.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	files[p.saSigningKey] = pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey))
	files[p.saPublicKey] = pemBlock("PUBLIC KEY", saPub)

	for path, content := range files {
		if err := os.WriteFile(path, content, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func writeKubeconfig(path, server string, p *pki, certPath, keyPath, user string) error {
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: teamaccess-local
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: teamaccess-local
  context:
    cluster: teamaccess-local
    user: %s
current-context: teamaccess-local
`, server, p.caCert, user, certPath, keyPath, user)
	return os.WriteFile(path, []byte(content), 0o600)
}
