package kubeproxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Target is how the proxy reaches a cluster's API server and proves who it
// is: the server URL, TLS settings (trusted CAs, client certificate) and
// any bearer token or basic credentials.
type Target struct {
	Server *url.URL
	TLS    *tls.Config
	// Token is a bearer token (users.user.token or tokenFile).
	Token string
	// Username and Password are basic credentials, when the kubeconfig
	// uses them.
	Username, Password string
}

// The subset of a kubeconfig file the agent reads. Field names follow the
// kubeconfig format (clientcmd's v1 Config); everything else is ignored.
type kubeconfigFile struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
			TLSServerName            string `json:"tls-server-name"`
		} `json:"cluster"`
	} `json:"clusters"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			ClientCertificate     string `json:"client-certificate"`
			ClientCertificateData string `json:"client-certificate-data"`
			ClientKey             string `json:"client-key"`
			ClientKeyData         string `json:"client-key-data"`
			Token                 string `json:"token"`
			TokenFile             string `json:"tokenFile"`
			Username              string `json:"username"`
			Password              string `json:"password"`
			Exec                  any    `json:"exec"`
			AuthProvider          any    `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
}

// maxKubeconfig bounds the kubeconfig file the agent reads.
const maxKubeconfig = 1 << 20

// LoadKubeconfig reads the kubeconfig file at path (k3s writes
// /etc/rancher/k3s/k3s.yaml) and returns its current context's target.
func LoadKubeconfig(path string) (*Target, error) {
	data, err := readFileMax(path, maxKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeproxy: read kubeconfig: %w", err)
	}
	t, err := ParseKubeconfig(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeproxy: kubeconfig %s: %w", path, err)
	}
	return t, nil
}

// ParseKubeconfig decodes a kubeconfig and returns the target of its
// current context (or of its only context, when none is current). Relative
// file names in it are resolved against dir. Clusters without TLS, users
// with exec or auth-provider plugins, and incomplete entries are refused
// with an error.
func ParseKubeconfig(data []byte, dir string) (*Target, error) {
	var kc kubeconfigFile
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	ctxName := kc.CurrentContext
	if ctxName == "" {
		if len(kc.Contexts) != 1 {
			return nil, errors.New("no current-context, and not exactly one context")
		}
		ctxName = kc.Contexts[0].Name
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("no context %q", ctxName)
	}
	cl := -1
	for i, c := range kc.Clusters {
		if c.Name == clusterName {
			cl = i
			break
		}
	}
	if cl < 0 {
		return nil, fmt.Errorf("context %q names no known cluster %q", ctxName, clusterName)
	}
	cluster := kc.Clusters[cl].Cluster
	u, err := url.Parse(cluster.Server)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("cluster %q: server %q is not a URL", clusterName, cluster.Server)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("cluster %q: server %q is not https", clusterName, cluster.Server)
	}
	t := &Target{Server: u, TLS: &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: cluster.TLSServerName,
		// Upgrades (exec, attach, port-forward) need HTTP/1.1.
		NextProtos:         []string{"http/1.1"},
		InsecureSkipVerify: cluster.InsecureSkipTLSVerify,
	}}
	if t.TLS.ServerName == "" {
		t.TLS.ServerName = u.Hostname()
	}
	caPEM, err := dataOrFile(cluster.CertificateAuthorityData, cluster.CertificateAuthority, dir)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: certificate authority: %w", clusterName, err)
	}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("cluster %q: certificate authority holds no PEM certificate", clusterName)
		}
		t.TLS.RootCAs = pool
	}

	us := -1
	for i, x := range kc.Users {
		if x.Name == userName {
			us = i
			break
		}
	}
	if us < 0 {
		return nil, fmt.Errorf("context %q names no known user %q", ctxName, userName)
	}
	user := kc.Users[us].User
	if user.Exec != nil || user.AuthProvider != nil {
		return nil, fmt.Errorf("user %q uses an exec or auth-provider plugin, which the agent does not run; give it a client certificate or a token", userName)
	}
	certPEM, err := dataOrFile(user.ClientCertificateData, user.ClientCertificate, dir)
	if err != nil {
		return nil, fmt.Errorf("user %q: client certificate: %w", userName, err)
	}
	keyPEM, err := dataOrFile(user.ClientKeyData, user.ClientKey, dir)
	if err != nil {
		return nil, fmt.Errorf("user %q: client key: %w", userName, err)
	}
	if len(certPEM) > 0 || len(keyPEM) > 0 {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("user %q: client certificate: %w", userName, err)
		}
		t.TLS.Certificates = []tls.Certificate{cert}
	}
	t.Token = user.Token
	if t.Token == "" && user.TokenFile != "" {
		b, err := readFileMax(resolve(user.TokenFile, dir), 64<<10)
		if err != nil {
			return nil, fmt.Errorf("user %q: token file: %w", userName, err)
		}
		t.Token = strings.TrimSpace(string(b))
	}
	t.Username, t.Password = user.Username, user.Password
	if len(t.TLS.Certificates) == 0 && t.Token == "" && t.Username == "" {
		return nil, fmt.Errorf("user %q has no client certificate, token or basic credentials", userName)
	}
	if strings.ContainsAny(t.Token, "\r\n") {
		return nil, fmt.Errorf("user %q: token holds a line break", userName)
	}
	return t, nil
}

// dataOrFile returns base64-decoded data when set, else the contents of
// file (resolved against dir), else nothing.
func dataOrFile(data, file, dir string) ([]byte, error) {
	if data != "" {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(data))
		if err != nil {
			return nil, fmt.Errorf("bad base64: %w", err)
		}
		return b, nil
	}
	if file == "" {
		return nil, nil
	}
	return readFileMax(resolve(file, dir), maxKubeconfig)
}

func resolve(file, dir string) string {
	if filepath.IsAbs(file) || dir == "" {
		return file
	}
	return filepath.Join(dir, file)
}

// readFileMax reads a file of at most max bytes.
func readFileMax(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}
