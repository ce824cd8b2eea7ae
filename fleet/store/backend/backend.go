// Package backend opens the fleet's store as it is configured: the
// embedded bbolt file in fleetd's data dir (the default), or an etcd
// cluster for several replicas. fleetd's --store flag and store: setting,
// and fleetd store copy's --from and --to, are parsed here, so that both
// name stores the same way:
//
//	""  or  bolt                  DATA_DIR/fleet.db (bbolt)
//	DIR  or  FILE.db              DIR/fleet.db, or that bbolt file
//	etcd://HOST:PORT[,HOST:PORT...][/PREFIX]
//	                              etcd members, keys under /PREFIX/
//	                              (default /fleet/)
//
// etcd connections use TLS when any of the TLS files is given: CAFile to
// verify the members, CertFile and KeyFile for a client certificate.
//
// Only fleet/... imports this package (fleetd, fleetd store copy).
package backend

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/store/etcdstore"
)

// TLSFiles are the PEM files of a TLS connection to etcd. All empty: no
// TLS.
type TLSFiles struct {
	// CAFile verifies the etcd members' certificates; default the system's
	// roots.
	CAFile string `json:"ca_file"`
	// CertFile and KeyFile are the client certificate and its key, for an
	// etcd that requires one (--client-cert-auth). Both or neither.
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
}

func (f TLSFiles) set() bool { return f.CAFile != "" || f.CertFile != "" || f.KeyFile != "" }

// Config says which store to open.
type Config struct {
	// URL names the store (see the package comment); empty means bolt.
	URL string
	// DataDir is fleetd's data dir, where "bolt" and "" put fleet.db.
	DataDir string
	// TLS is used for etcd.
	TLS TLSFiles
	// Logger receives the store's messages; nil means none.
	Logger *slog.Logger
}

// Kind is the kind of store a Spec names.
type Kind string

// The kinds of store.
const (
	Bolt Kind = "bolt"
	Etcd Kind = "etcd"
)

// Spec is a parsed Config.
type Spec struct {
	Kind Kind
	// Path is the bbolt file (Bolt).
	Path string
	// Endpoints and Prefix are the etcd members and key prefix (Etcd).
	Endpoints []string
	Prefix    string
	// TLS is the etcd connection's TLS (nil: plain TCP).
	TLS *tls.Config
}

// String describes the store for logs and messages.
func (s Spec) String() string {
	if s.Kind == Etcd {
		t := ""
		if s.TLS != nil {
			t = " (TLS)"
		}
		return fmt.Sprintf("etcd %s prefix %s%s", strings.Join(s.Endpoints, ","), s.Prefix, t)
	}
	return "bbolt " + s.Path
}

// Parse checks cfg and reads its TLS files.
func Parse(cfg Config) (Spec, error) {
	u := strings.TrimSpace(cfg.URL)
	if rest, ok := strings.CutPrefix(u, "etcd://"); ok {
		return parseEtcd(rest, cfg.TLS)
	}
	if strings.Contains(u, "://") {
		return Spec{}, fmt.Errorf("store %q: unknown kind; use bolt, a data dir, or etcd://HOST:PORT[,HOST:PORT...]/PREFIX", u)
	}
	if cfg.TLS.set() {
		return Spec{}, errors.New("store: TLS files are for etcd, but the store is bbolt")
	}
	switch {
	case u == "" || u == "bolt":
		if cfg.DataDir == "" {
			return Spec{}, errors.New("store: the bbolt store needs a data dir")
		}
		return Spec{Kind: Bolt, Path: filepath.Join(cfg.DataDir, "fleet.db")}, nil
	case strings.HasSuffix(u, ".db"):
		return Spec{Kind: Bolt, Path: u}, nil
	default:
		return Spec{Kind: Bolt, Path: filepath.Join(u, "fleet.db")}, nil
	}
}

func parseEtcd(rest string, files TLSFiles) (Spec, error) {
	hosts, prefix, _ := strings.Cut(rest, "/")
	spec := Spec{Kind: Etcd, Prefix: "/" + strings.Trim(prefix, "/") + "/"}
	if spec.Prefix == "//" {
		spec.Prefix = etcdstore.DefaultPrefix
	}
	for h := range strings.SplitSeq(hosts, ",") {
		if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
			return Spec{}, fmt.Errorf("store etcd://%s: %q is not HOST:PORT", rest, h)
		}
		spec.Endpoints = append(spec.Endpoints, h)
	}
	if files.set() {
		t, err := loadTLS(files)
		if err != nil {
			return Spec{}, err
		}
		spec.TLS = t
	}
	return spec, nil
}

func loadTLS(f TLSFiles) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		b, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("store TLS: read the CA file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("store TLS: %s holds no PEM certificate", f.CAFile)
		}
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("store TLS: give both the client certificate and its key, or neither")
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("store TLS: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Open opens the store spec names. For etcd it waits, logging why, until
// etcd answers or ctx ends (etcdstore.Open).
func Open(ctx context.Context, spec Spec, log *slog.Logger) (store.Store, error) {
	switch spec.Kind {
	case Bolt:
		return boltstore.Open(spec.Path, boltstore.Options{Logger: log})
	case Etcd:
		return etcdstore.Open(ctx, etcdstore.Config{Endpoints: spec.Endpoints, Prefix: spec.Prefix, TLS: spec.TLS, Logger: log})
	}
	return nil, fmt.Errorf("store: unknown kind %q", spec.Kind)
}
