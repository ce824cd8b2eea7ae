package tsh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// Trusted clusters (docs/trusted-clusters.md): a login to a root fleet
// reaches the devices of its leaf clusters too, through the root. tsh
// keeps, per leaf it was asked to reach, an SSH certificate the root
// issued for the login's key, in the profile's directory:
//
//	$TSH_HOME/keys/PROXY/USER/clusters/LEAF/key-cert.pub   the certificate for LEAF's devices
//	$TSH_HOME/keys/PROXY/USER/clusters/LEAF/cluster.json   LEAF's roles, logins and host CA keys for the user
//
// Every command that reaches devices takes --cluster=LEAF; tsh login LEAF
// makes LEAF the default until tsh login ROOT (or a new login).

const (
	dirClusters     = "clusters"
	fileLeafProfile = "cluster.json"
)

// leafProfile is a login's view of one leaf cluster.
type leafProfile struct {
	Cluster    string    `json:"cluster"`
	User       string    `json:"user"` // how the leaf names the user (ROOT/USER)
	Roles      []string  `json:"roles"`
	Logins     []string  `json:"logins"`
	Expires    time.Time `json:"expires"`
	HostCAKeys []string  `json:"host_ca_keys"`
}

// site is where a command works: the login's fleet, or one of its leaf
// clusters through it.
type site struct {
	p   *profile
	dir string
	// leaf is the leaf cluster's name, "" for the fleet itself; lp its
	// certificate's facts, once fetched.
	leaf string
	lp   *leafProfile
}

// name is the cluster's name: what OpenSSH host names end with.
func (s *site) name() string {
	if s.leaf != "" {
		return s.leaf
	}
	return s.p.Cluster
}

// leafDir is where the leaf's files are kept.
func (s *site) leafDir() string { return filepath.Join(s.dir, dirClusters, s.leaf) }

// certFile is the SSH certificate that reaches the site's devices.
func (s *site) certFile() string {
	if s.leaf == "" {
		return filepath.Join(s.dir, fileCert)
	}
	return filepath.Join(s.leafDir(), fileCert)
}

func (s *site) logins() []string {
	if s.lp != nil {
		return s.lp.Logins
	}
	return s.p.Logins
}

// hostCAs are the keys that verify the site's devices.
func (s *site) hostCAs() ([]ssh.PublicKey, error) {
	if s.lp == nil {
		return s.p.hostCAs()
	}
	return parseHostCAs(s.lp.HostCAKeys)
}

// client is a client of the site's API: the leaf's through the fleet.
func (r *runner) client(s *site) (*client.Client, error) {
	c, err := r.newClient(s.p, s.dir)
	if err != nil {
		return nil, err
	}
	return c.In(s.leaf), nil
}

// site resolves where a command works: the leaf named by --cluster
// (flag), else the login's current cluster. The fleet's own name, or "",
// is the fleet itself.
func (r *runner) site(flag string) (*site, error) {
	p, dir, err := r.currentProfile()
	if err != nil {
		return nil, err
	}
	s := &site{p: p, dir: dir, leaf: p.Current}
	if flag != "" {
		s.leaf = flag
	}
	if s.leaf == p.Cluster {
		s.leaf = ""
	}
	if s.leaf != "" {
		if err := checkCluster(s.leaf); err != nil {
			return nil, fmt.Errorf("--cluster: %w", err)
		}
		s.lp, _ = loadLeafProfile(s.leafDir())
	}
	return s, nil
}

func loadLeafProfile(dir string) (*leafProfile, error) {
	b, err := os.ReadFile(filepath.Join(dir, fileLeafProfile))
	if err != nil {
		return nil, err
	}
	var lp leafProfile
	if err := json.Unmarshal(b, &lp); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, fileLeafProfile), err)
	}
	if err := checkCluster(lp.Cluster); err != nil {
		return nil, err
	}
	if _, err := parseHostCAs(lp.HostCAKeys); err != nil {
		return nil, err
	}
	return &lp, nil
}

// sshReady makes sure a leaf site holds a certificate for its devices
// that has not expired, asking the fleet for one (no password: the
// login's certificate vouches) when it does not.
func (r *runner) sshReady(ctx context.Context, s *site) error {
	if s.leaf == "" {
		return nil
	}
	if s.lp != nil && r.stdio.Now().Before(s.lp.Expires) {
		if _, err := os.Stat(s.certFile()); err == nil {
			return nil
		}
	}
	return r.fetchLeafCert(ctx, s)
}

// fetchLeafCert asks the fleet for a certificate for the login's key on
// the leaf's devices, and keeps it with the leaf's host CA keys (in
// known_hosts too, for OpenSSH).
func (r *runner) fetchLeafCert(ctx context.Context, s *site) error {
	pub, err := os.ReadFile(filepath.Join(s.dir, filePub))
	if err != nil {
		return fmt.Errorf("the login in %s is incomplete (%w); run tsh login again", s.dir, err)
	}
	c, err := r.newClient(s.p, s.dir)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.ClusterCerts(ctx, s.leaf, &api.ClusterCertsRequest{SSHPublicKey: string(pub)})
	if err != nil {
		return clusterError(err, s.leaf)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(resp.SSHCert))
	cert, ok := key.(*ssh.Certificate)
	if err != nil || !ok || cert.CertType != ssh.UserCert {
		return fmt.Errorf("the fleet's certificate for %s is not a user certificate (%v)", s.leaf, err)
	}
	own, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil || string(cert.Key.Marshal()) != string(own.Marshal()) {
		return fmt.Errorf("the fleet's certificate for %s is for another key; run tsh login again", s.leaf)
	}
	hostKeys, err := parseHostCAs(resp.HostCAKeys)
	if err != nil || len(hostKeys) == 0 {
		return fmt.Errorf("the fleet sent no usable SSH host CA key of %s (%v), so its devices cannot be verified; tell your fleet admin", s.leaf, err)
	}
	lp := &leafProfile{Cluster: s.leaf, User: resp.User, Roles: resp.Roles, Logins: resp.Logins, Expires: resp.Expires}
	for _, k := range hostKeys {
		lp.HostCAKeys = append(lp.HostCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	if err := os.MkdirAll(s.leafDir(), 0o700); err != nil {
		return err
	}
	b, err := jsonIndent(lp)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.leafDir(), fileCert), ssh.MarshalAuthorizedKey(cert), 0o644); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.leafDir(), fileLeafProfile), b, 0o600); err != nil {
		return err
	}
	home, err := r.home()
	if err != nil {
		return err
	}
	marker := s.p.marker() + "/" + s.leaf
	var lines []string
	for _, k := range lp.HostCAKeys {
		lines = append(lines, fmt.Sprintf("@cert-authority *.%s %s %s", s.leaf, k, marker))
	}
	if err := updateKnownHosts(filepath.Join(home, "known_hosts"), marker, lines); err != nil {
		return err
	}
	s.lp = lp
	return nil
}

// parseHostCAs parses host CA keys in authorized_keys format.
func parseHostCAs(lines []string) ([]ssh.PublicKey, error) {
	var out []ssh.PublicKey
	for _, k := range lines {
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, fmt.Errorf("host CA key: %w", err)
		}
		out = append(out, key)
	}
	return out, nil
}

// clusterError adds what to do to a leaf cluster's refusal.
func clusterError(err error, leaf string) error {
	apiErr, ok := errors.AsType[*api.Error](err)
	if !ok {
		return fmt.Errorf("cluster %s: %w", leaf, err)
	}
	switch apiErr.Code {
	case api.CodeNotFound:
		return fmt.Errorf("cluster %s: %s", leaf, withAdvice(apiErr.Message, "tsh clusters lists the clusters you may reach"))
	case api.CodeForbidden:
		return fmt.Errorf("cluster %s: %s", leaf, withAdvice(apiErr.Message, "ask the leaf cluster's admin about its role_map and roles"))
	}
	return fmt.Errorf("cluster %s: %w", leaf, apiHint(err))
}

// loginCluster makes leaf (or the fleet itself) the login's default
// cluster: for a leaf, it gets a certificate for its devices first, which
// also checks that the leaf lets the user in.
func (r *runner) loginCluster(ctx context.Context, name string) error {
	s, err := r.site(name)
	if err != nil {
		return fmt.Errorf("login %s: %w", name, err)
	}
	if s.leaf != "" {
		if err := r.fetchLeafCert(ctx, s); err != nil {
			return fmt.Errorf("login %s: %w", name, err)
		}
	}
	s.p.Current = s.leaf
	if err := r.saveProfile(s.p, s.dir); err != nil {
		return fmt.Errorf("login %s: %w", name, err)
	}
	if s.leaf == "" {
		fmt.Fprintf(r.stdio.Out, "Now working in the fleet %q at %s as %s.\n", s.p.Cluster, s.p.Proxy, s.p.User)
		return nil
	}
	lp := s.lp
	fmt.Fprintf(r.stdio.Out, "Logged in to the leaf cluster %q through %s as %s.\n", s.leaf, s.p.Proxy, lp.User)
	fmt.Fprintf(r.stdio.Out, "  Roles:       %s\n", cli.List(lp.Roles))
	fmt.Fprintf(r.stdio.Out, "  Logins:      %s\n", cli.List(lp.Logins))
	fmt.Fprintf(r.stdio.Out, "  Valid until: %s (for %s)\n", cli.Time(lp.Expires), cli.Duration(lp.Expires.Sub(r.stdio.Now())))
	fmt.Fprintf(r.stdio.Out, "tsh ls, ssh, scp and kube now work in %s; tsh login %s goes back; tsh config adds *.%s for OpenSSH.\n", s.leaf, s.p.Cluster, s.leaf)
	return nil
}

// saveProfile writes profile.json again.
func (r *runner) saveProfile(p *profile, dir string) error {
	b, err := jsonIndent(p)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, fileProfile), b, 0o600)
}

// leafSites are the leaf clusters the login holds a certificate for.
func (r *runner) leafSites(p *profile, dir string) []*site {
	entries, err := os.ReadDir(filepath.Join(dir, dirClusters))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var out []*site
	for _, e := range entries {
		if !e.IsDir() || checkCluster(e.Name()) != nil || e.Name() == p.Cluster {
			continue
		}
		s := &site{p: p, dir: dir, leaf: e.Name()}
		if lp, err := loadLeafProfile(s.leafDir()); err == nil && lp.Cluster == e.Name() {
			s.lp = lp
			out = append(out, s)
		}
	}
	return out
}

func (r *runner) clustersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clusters",
		Short: "List the fleet and the leaf clusters you reach through it",
		Long: `List the fleet you are logged in to and its leaf clusters (trusted
clusters: leaf fleets whose devices you reach through this one, as the
leaf's roles allow), with their tunnels' state. The current one, where
commands work without --cluster, is marked; tsh login CLUSTER changes it.`,
		Example: "  tsh clusters\n  tsh login plant-7\n  tsh ls --cluster=plant-7",
		Args:    cli.NoArgs,
	}
	format := cli.FormatFlag(cmd, "")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return r.clusters(cmd.Context(), *format) }
	return cmd
}

func (r *runner) clusters(ctx context.Context, format cli.Format) error {
	s, err := r.site("")
	if err != nil {
		return err
	}
	c, err := r.newClient(s.p, s.dir)
	if err != nil {
		return err
	}
	defer c.Close()
	leaves, err := c.Clusters(ctx)
	if err != nil {
		return fmt.Errorf("clusters: %w", apiHint(err))
	}
	all := []api.Cluster{{Name: s.p.Cluster, Kind: "this fleet", Online: true, LastSeen: r.stdio.Now()}}
	for _, l := range leaves {
		if l.Kind == api.ClusterLeaf {
			all = append(all, l)
		}
	}
	return cli.PrintList(r.stdio.Out, format, "clusters", all, false, func() error {
		now := r.stdio.Now()
		tw := cli.NewTable(r.stdio.Out, "NAME", "KIND", "STATUS", "LAST SEEN", "SELECTED")
		for _, l := range all {
			status, seen := "offline", "never"
			if l.Online {
				status, seen = "online", "now"
			} else if !l.LastSeen.IsZero() {
				seen = cli.Ago(now, l.LastSeen)
			}
			sel := ""
			if l.Name == s.name() {
				sel = "*"
			}
			tw.Row(l.Name, l.Kind, status, seen, sel)
		}
		return tw.Flush()
	})
}

// completeClusterNames offers the leaf clusters of the login.
func (r *runner) completeClusterNames(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
	s, err := r.site("")
	if err != nil {
		return nil, err
	}
	c, err := r.newClient(s.p, s.dir)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	list, err := c.Clusters(ctx)
	if err != nil {
		return nil, err
	}
	out := []cobra.Completion{cli.Completion(s.p.Cluster, "this fleet")}
	for _, l := range list {
		if l.Kind == api.ClusterLeaf {
			out = append(out, cli.Completion(l.Name, "leaf"))
		}
	}
	return out, nil
}

// clusterFlag adds --cluster to cmd.
func (r *runner) clusterFlag(cmd *cobra.Command, v *string) {
	cmd.Flags().StringVar(v, "cluster", "", "work in this leaf `cluster`, through the fleet (default: the one tsh login chose; tsh clusters lists them)")
	cmd.RegisterFlagCompletionFunc("cluster", cli.CompleteArgs(-1, r.completeClusterNames))
}
