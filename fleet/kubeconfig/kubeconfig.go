// Package kubeconfig edits users' kubeconfig files for tsh kube login and
// logout, with client-go's clientcmd, the way kubectl config does:
//
//   - the files are $KUBECONFIG's list (colon-separated) or ~/.kube/config;
//   - an entry that exists is updated in the file that holds it; a new one
//     goes into the only file, or the first that exists, or the last;
//   - current-context is set in the first file that sets one;
//   - every other cluster, user and context is kept as it was.
//
// tsh adds, per reachable cluster, a cluster, a user and a context of the
// same name. The user holds no key: it runs "tsh kube credentials", an
// exec credential plugin, so kubectl always gets the certificate of the
// user's latest tsh login. Remove finds tsh's entries again by that
// plugin's arguments. (WriteStandalone writes tsh proxy kube's file of its
// own.)
//
// It is a client package: tsh imports it, and it never imports server
// packages.
package kubeconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Files returns the kubeconfig files in precedence order: the entries of
// $KUBECONFIG (from getenv), or $HOME/.kube/config.
func Files(getenv func(string) string) ([]string, error) {
	if v := getenv("KUBECONFIG"); v != "" {
		var out []string
		for _, f := range filepath.SplitList(v) {
			if f != "" && !slices.Contains(out, f) {
				out = append(out, f)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	home := getenv("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return nil, fmt.Errorf("kubeconfig: no KUBECONFIG and no home directory: %w", err)
		}
	}
	return []string{filepath.Join(home, ".kube", "config")}, nil
}

// Entry is one cluster to add: a cluster, a user and a context, all named
// Name.
type Entry struct {
	Name string
	// Server is the cluster's URL (https://FLEET/v1/kube/DEVICE).
	Server string
	// CAData is the PEM of the CAs the server's certificate chains to.
	CAData []byte
	// Exec runs the credential plugin: Command with Args, plus Env.
	Command string
	Args    []string
	Env     map[string]string
	// Impersonate and ImpersonateGroups make kubectl ask to act as one of
	// the allowed Kubernetes users and a subset of the groups (--as).
	Impersonate       string
	ImpersonateGroups []string
	// Namespace is the context's default namespace; empty leaves it out.
	Namespace string
}

// file is one loaded kubeconfig file.
type file struct {
	path    string
	cfg     *clientcmdapi.Config
	exists  bool
	changed bool
}

func load(paths []string) ([]*file, error) {
	var out []*file
	for _, p := range paths {
		f := &file{path: p}
		cfg, err := clientcmd.LoadFromFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			cfg = clientcmdapi.NewConfig()
		case err != nil:
			return nil, fmt.Errorf("kubeconfig: %s: %w", p, err)
		default:
			f.exists = true
		}
		f.cfg = cfg
		out = append(out, f)
	}
	return out, nil
}

// destination is where new entries go, as kubectl config decides: the only
// file, else the first that exists, else the last.
func destination(files []*file) *file {
	if len(files) == 1 {
		return files[0]
	}
	for _, f := range files {
		if f.exists {
			return f
		}
	}
	return files[len(files)-1]
}

func save(files []*file) error {
	for _, f := range files {
		if !f.changed {
			continue
		}
		b, err := clientcmd.Write(*f.cfg)
		if err != nil {
			return fmt.Errorf("kubeconfig: encode %s: %w", f.path, err)
		}
		if err := writeAtomic(f.path, b); err != nil {
			return fmt.Errorf("kubeconfig: write %s: %w", f.path, err)
		}
	}
	return nil
}

// withLock runs fn holding kubectl's lock files (PATH.lock) for paths.
func withLock(paths []string, fn func() error) error {
	var locked []string
	defer func() {
		for _, p := range locked {
			os.Remove(p + ".lock")
		}
	}()
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("kubeconfig: %w", err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			f, err := os.OpenFile(p+".lock", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err == nil {
				f.Close()
				locked = append(locked, p)
				break
			}
			if !errors.Is(err, fs.ErrExist) || time.Now().After(deadline) {
				return fmt.Errorf("kubeconfig: lock %s: %w (remove %s.lock if no kubectl or tsh is running)", p, err, p)
			}
			time.Sleep(50 * time.Millisecond) // another writer holds it
		}
	}
	return fn()
}

// Add writes e into the kubeconfig files, replacing entries of the same
// name, and makes it the current context when setCurrent.
func Add(paths []string, e Entry, setCurrent bool) error {
	if len(paths) == 0 || e.Name == "" {
		return errors.New("kubeconfig: no file or no entry name")
	}
	return withLock(paths, func() error {
		files, err := load(paths)
		if err != nil {
			return err
		}
		dst := destination(files)
		for _, f := range files {
			if f.cfg.Contexts[e.Name] != nil {
				dst = f
				break
			}
		}
		cluster := clientcmdapi.NewCluster()
		cluster.Server = e.Server
		cluster.CertificateAuthorityData = e.CAData
		user := clientcmdapi.NewAuthInfo()
		user.Exec = &clientcmdapi.ExecConfig{
			APIVersion:      clientauthv1.SchemeGroupVersion.String(),
			Command:         e.Command,
			Args:            slices.Clone(e.Args),
			InteractiveMode: clientcmdapi.NeverExecInteractiveMode,
			InstallHint:     "tsh runs this to give kubectl your fleet certificate; install tsh, or run tsh kube login again",
		}
		for _, k := range sortedKeys(e.Env) {
			user.Exec.Env = append(user.Exec.Env, clientcmdapi.ExecEnvVar{Name: k, Value: e.Env[k]})
		}
		user.Impersonate = e.Impersonate
		user.ImpersonateGroups = slices.Clone(e.ImpersonateGroups)
		kctx := clientcmdapi.NewContext()
		kctx.Cluster, kctx.AuthInfo, kctx.Namespace = e.Name, e.Name, e.Namespace
		dst.cfg.Clusters[e.Name] = cluster
		dst.cfg.AuthInfos[e.Name] = user
		dst.cfg.Contexts[e.Name] = kctx
		dst.changed = true
		if setCurrent {
			cur := dst
			for _, f := range files {
				if f.cfg.CurrentContext != "" {
					cur = f
					break
				}
			}
			cur.cfg.CurrentContext = e.Name
			cur.changed = true
		}
		return save(files)
	})
}

// Remove deletes, from every file, the contexts whose user match selects,
// with that user and the context's cluster. A current-context that names
// a removed context is cleared. It returns the removed context names.
func Remove(paths []string, match func(name string, user *clientcmdapi.AuthInfo) bool) ([]string, error) {
	// Look first without the lock: with nothing to remove, nothing is
	// locked or written (no ~/.kube is created).
	files, err := load(paths)
	if err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(files, func(f *file) bool {
		for name, kctx := range f.cfg.Contexts {
			if u := f.cfg.AuthInfos[kctx.AuthInfo]; u != nil && match(name, u) {
				return true
			}
		}
		return false
	}) {
		return nil, nil
	}
	var removed []string
	err = withLock(paths, func() error {
		files, err := load(paths)
		if err != nil {
			return err
		}
		for _, f := range files {
			for name, kctx := range f.cfg.Contexts {
				u := f.cfg.AuthInfos[kctx.AuthInfo]
				if u == nil || !match(name, u) {
					continue
				}
				delete(f.cfg.Contexts, name)
				delete(f.cfg.AuthInfos, kctx.AuthInfo)
				delete(f.cfg.Clusters, kctx.Cluster)
				removed = append(removed, name)
				f.changed = true
			}
		}
		for _, f := range files {
			if slices.Contains(removed, f.cfg.CurrentContext) {
				f.cfg.CurrentContext = ""
				f.changed = true
			}
		}
		return save(files)
	})
	slices.Sort(removed)
	return removed, err
}

// CurrentContext returns the current context of the merged files, or "".
func CurrentContext(paths []string) (string, error) {
	files, err := load(paths)
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if f.cfg.CurrentContext != "" {
			return f.cfg.CurrentContext, nil
		}
	}
	return "", nil
}

// ExecArgsMatch reports whether user runs an exec plugin whose arguments
// start with prefix and include every one of has.
func ExecArgsMatch(user *clientcmdapi.AuthInfo, prefix []string, has ...string) bool {
	if user.Exec == nil || len(user.Exec.Args) < len(prefix) || !slices.Equal(user.Exec.Args[:len(prefix)], prefix) {
		return false
	}
	for _, h := range has {
		if !slices.Contains(user.Exec.Args, h) {
			return false
		}
	}
	return true
}

// ExecCredential returns the JSON an exec credential plugin prints: a
// client.authentication.k8s.io/v1 ExecCredential with the client
// certificate and key (PEM) that kubectl uses until expires.
func ExecCredential(certPEM, keyPEM []byte, expires time.Time) ([]byte, error) {
	ts := metav1.NewTime(expires.UTC().Truncate(time.Second))
	ec := clientauthv1.ExecCredential{
		TypeMeta: metav1.TypeMeta{APIVersion: clientauthv1.SchemeGroupVersion.String(), Kind: "ExecCredential"},
		Status: &clientauthv1.ExecCredentialStatus{
			ClientCertificateData: string(certPEM),
			ClientKeyData:         string(keyPEM),
			ExpirationTimestamp:   &ts,
		},
	}
	b, err := json.Marshal(&ec)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: exec credential: %w", err)
	}
	return append(b, '\n'), nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// writeAtomic writes data to path (mode 0600) through a temporary file in
// the same directory.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Standalone is a kubeconfig of its own (tsh proxy kube's): one cluster,
// user and context, all called Name, that reach Server with a client
// certificate (Cert, Key: PEM) and trust CA (PEM).
type Standalone struct {
	Name, Server, Namespace string
	CA, Cert, Key           []byte
}

// WriteStandalone writes s to path (mode 0600, replacing what is there),
// with clientcmd, as tsh kube login writes its entries.
func WriteStandalone(path string, s Standalone) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[s.Name] = &clientcmdapi.Cluster{Server: s.Server, CertificateAuthorityData: s.CA}
	cfg.AuthInfos[s.Name] = &clientcmdapi.AuthInfo{ClientCertificateData: s.Cert, ClientKeyData: s.Key}
	cfg.Contexts[s.Name] = &clientcmdapi.Context{Cluster: s.Name, AuthInfo: s.Name, Namespace: s.Namespace}
	cfg.CurrentContext = s.Name
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kubeconfig: encode %s: %w", path, err)
	}
	if err := writeAtomic(path, b); err != nil {
		return fmt.Errorf("kubeconfig: write %s: %w", path, err)
	}
	return nil
}

// Name returns the context name tsh uses for a cluster of a fleet:
// FLEET-NAME, lower-case.
func Name(fleet, cluster string) string {
	return strings.ToLower(fleet + "-" + cluster)
}
