package tsh

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/fleet/kubeconfig"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) kubeCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "kube",
		Short: "Kubernetes clusters on devices, through the fleet",
		Long: `Reach the Kubernetes clusters (k3s) that devices run, with plain kubectl:
tsh kube login NAME adds the cluster to your kubeconfig, and kubectl then
talks to it through the fleet with your fleet certificate (the kubeconfig
runs "tsh kube credentials", so a new tsh login is picked up at once).
KUBECONFIG is respected, other contexts are kept.`,
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the Kubernetes clusters you may reach",
		Args:  cli.NoArgs,
	}
	format := cli.FormatFlag(ls, "")
	var lsCluster string
	r.clusterFlag(ls, &lsCluster)
	ls.RunE = func(cmd *cobra.Command, _ []string) error { return r.kubeLs(cmd.Context(), lsCluster, *format) }

	var as, asGroups, namespace, cluster string
	login := &cobra.Command{
		Use:   "login NAME",
		Short: "Add a device's cluster to your kubeconfig and make it current",
		Example: `  tsh kube login pi-1
  kubectl get pods -A`,
		Args:              cli.ExactArgs(1, "the cluster's NAME (tsh kube ls lists them)"),
		ValidArgsFunction: cli.CompleteArgs(1, r.completeClusters),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.kubeLogin(cmd.Context(), args[0], as, asGroups, namespace, cluster)
		},
	}
	r.clusterFlag(login, &cluster)
	login.Flags().StringVar(&as, "as", "", "the Kubernetes user to act as, when your roles allow several (default: the only one, or your fleet name)")
	login.Flags().StringVar(&asGroups, "as-group", "", "act in only these of your Kubernetes groups, comma-separated (default: all of them)")
	login.Flags().StringVar(&namespace, "namespace", "", "the context's default namespace (default: the cluster's default)")

	logout := &cobra.Command{
		Use:               "logout [NAME]",
		Short:             "Remove what tsh kube login added (this login's contexts, or NAME's)",
		Args:              cli.RangeArgs(0, 1, "NAME"),
		ValidArgsFunction: cli.CompleteArgs(1, r.completeClusters),
		RunE:              func(cmd *cobra.Command, args []string) error { return r.kubeLogout(args) },
	}

	var proxy, user string
	creds := &cobra.Command{
		Use:    "credentials --proxy=HOST:PORT --user=NAME",
		Short:  "Print the login's certificate for kubectl (run by kubectl)",
		Hidden: true,
		Args:   cli.NoArgs,
		RunE:   func(cmd *cobra.Command, _ []string) error { return r.kubeCredentials(proxy, user) },
	}
	creds.Flags().StringVar(&proxy, "proxy", "", "the fleet of the login")
	creds.Flags().StringVar(&user, "user", "", "the user of the login")

	group.AddCommand(ls, login, logout, creds)
	return group
}

// completeClusters offers the Kubernetes clusters the login may reach.
func (r *runner) completeClusters(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
	_, all, err := r.kubeClusters(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(all))
	for _, k := range all {
		status := "offline"
		if k.Online {
			status = "online"
		}
		out = append(out, cli.Completion(k.Name, status+" "+cli.Labels(k.Labels)))
	}
	return out, nil
}

// kubeClusters asks the fleet for the Kubernetes clusters the user may
// reach in cluster (--cluster: a leaf; "" for the current one).
func (r *runner) kubeClusters(ctx context.Context, cluster string) (*site, []api.KubeCluster, error) {
	s, err := r.site(cluster)
	if err != nil {
		return nil, nil, err
	}
	c, err := r.client(s)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	all, err := c.KubeClusters(ctx)
	if err != nil {
		if s.leaf != "" {
			return nil, nil, clusterError(err, s.leaf)
		}
		return nil, nil, apiHint(err)
	}
	return s, all, nil
}

func (r *runner) kubeLs(ctx context.Context, cluster string, format cli.Format) error {
	s, all, err := r.kubeClusters(ctx, cluster)
	if err != nil {
		return fmt.Errorf("kube ls: %w", err)
	}
	return cli.PrintList(r.stdio.Out, format, "kube_clusters", all, false, func() error {
		return r.kubeTable(s, all)
	})
}

// kubeTable prints clusters as a table, the current context's marked.
func (r *runner) kubeTable(s *site, all []api.KubeCluster) error {
	p := s.p
	if len(all) == 0 {
		fmt.Fprintln(r.stdio.Err, "No Kubernetes cluster you may reach; if you expected some, ask your fleet admin about your roles (kubernetes_groups).")
		return nil
	}
	current := ""
	if files, err := kubeconfig.Files(r.stdio.Getenv); err == nil {
		current, _ = kubeconfig.CurrentContext(files)
	}
	tw := cli.NewTable(r.stdio.Out, "NAME", "LABELS", "STATUS", "KUBERNETES USERS", "KUBERNETES GROUPS", "SELECTED")
	for _, k := range all {
		status := "offline"
		if k.Online {
			status = "online"
		}
		users := k.Users
		if len(users) == 0 {
			users = []string{p.User}
		}
		sel := ""
		if current == kubeconfig.Name(s.name(), k.Name) {
			sel = "*"
		}
		tw.Row(k.Name, cli.Labels(k.Labels), status, strings.Join(users, ","), cli.Dash(strings.Join(k.Groups, ",")), sel)
	}
	return tw.Flush()
}

func (r *runner) kubeLogin(ctx context.Context, name, asFlag, asGroupsFlag, namespaceFlag, cluster string) error {
	as, asGroups, namespace := &asFlag, &asGroupsFlag, &namespaceFlag
	s, all, err := r.kubeClusters(ctx, cluster)
	if err != nil {
		return fmt.Errorf("kube login: %w", err)
	}
	p, dir := s.p, s.dir
	i := slices.IndexFunc(all, func(k api.KubeCluster) bool { return k.Name == name })
	if i < 0 {
		return fmt.Errorf("kube login: no Kubernetes cluster %q that you may reach; tsh kube ls lists them", name)
	}
	k := all[i]
	users := k.Users
	if len(users) == 0 {
		users = []string{p.User}
		if s.leaf != "" {
			users = []string{api.RemoteUser(p.Cluster, p.User)}
		}
	}
	if *as != "" && !slices.Contains(users, *as) {
		return fmt.Errorf("kube login: your roles do not allow acting as %q on %s; allowed: %s", *as, name, cli.List(users))
	}
	if *as == "" && len(users) > 1 {
		return fmt.Errorf("kube login: your roles allow several Kubernetes users on %s (%s): pick one with --as", name, cli.List(users))
	}
	var groups []string
	if *asGroups != "" {
		for _, g := range strings.Split(*asGroups, ",") {
			if !slices.Contains(k.Groups, g) {
				return fmt.Errorf("kube login: your roles do not give Kubernetes group %q on %s; yours: %s", g, name, cli.List(k.Groups))
			}
			groups = append(groups, g)
		}
	}
	cas, err := os.ReadFile(filepath.Join(dir, fileCAs))
	if err != nil {
		return fmt.Errorf("kube login: the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	exe, err := r.stdio.Executable()
	if err != nil {
		return fmt.Errorf("kube login: find tsh itself for kubectl to run: %w", err)
	}
	e := kubeconfig.Entry{
		Name:              kubeconfig.Name(s.name(), name),
		Server:            "https://" + p.Proxy + api.ClusterPath(s.leaf, api.PathKube+"/"+name),
		CAData:            cas,
		Command:           exe,
		Args:              kubeCredentialArgs(p),
		Impersonate:       *as,
		ImpersonateGroups: groups,
		Namespace:         *namespace,
	}
	if h := r.stdio.Getenv("TSH_HOME"); h != "" {
		home, err := r.home()
		if err != nil {
			return err
		}
		e.Env = map[string]string{"TSH_HOME": home}
	}
	files, err := kubeconfig.Files(r.stdio.Getenv)
	if err != nil {
		return fmt.Errorf("kube login: %w", err)
	}
	if err := kubeconfig.Add(files, e, true); err != nil {
		return fmt.Errorf("kube login: %w", err)
	}
	user := *as
	if user == "" {
		user = users[0]
	}
	if len(groups) == 0 {
		groups = k.Groups
	}
	fmt.Fprintf(r.stdio.Out, "Logged in to Kubernetes cluster %s as %s (groups: %s).\n", name, user, cli.Dash(strings.Join(groups, ", ")))
	fmt.Fprintf(r.stdio.Out, "Context %q in %s is current; try: kubectl version\n", e.Name, strings.Join(files, string(os.PathListSeparator)))
	return nil
}

// kubeCredentialArgs are the exec plugin's arguments for a profile; they
// also mark the kubeconfig entries tsh added for it.
func kubeCredentialArgs(p *profile) []string {
	return []string{"kube", "credentials", "--proxy=" + p.Proxy, "--user=" + p.User}
}

func (r *runner) kubeLogout(pos []string) error {
	s, err := r.site("")
	if err != nil {
		return err
	}
	p := s.p
	only := ""
	if len(pos) == 1 {
		only = kubeconfig.Name(s.name(), pos[0])
	}
	removed, err := r.removeKube(p, only)
	if err != nil {
		return fmt.Errorf("kube logout: %w", err)
	}
	if len(removed) == 0 {
		fmt.Fprintln(r.stdio.Out, "No Kubernetes context of this login in your kubeconfig; nothing to do.")
		return nil
	}
	fmt.Fprintf(r.stdio.Out, "Removed Kubernetes contexts: %s.\n", strings.Join(removed, ", "))
	return nil
}

// removeKube removes the kubeconfig entries tsh kube login added for p (only
// the context named only, when set) and returns the contexts removed.
func (r *runner) removeKube(p *profile, only string) ([]string, error) {
	files, err := kubeconfig.Files(r.stdio.Getenv)
	if err != nil {
		return nil, err
	}
	args := kubeCredentialArgs(p)
	return kubeconfig.Remove(files, func(name string, u *clientcmdapi.AuthInfo) bool {
		return (only == "" || name == only) && kubeconfig.ExecArgsMatch(u, args[:2], args[2:]...)
	})
}

// kubeCredentials is the exec credential plugin kubectl runs: it prints the
// login's certificate and key as an ExecCredential, valid until the
// certificate expires.
func (r *runner) kubeCredentials(proxyFlag, userFlag string) error {
	proxy, user := &proxyFlag, &userFlag
	p, dir, err := r.loadProfile(*proxy, *user)
	if errors.Is(err, errNotLoggedIn) {
		return fmt.Errorf("not logged in to %s as %s; run tsh login --proxy=%s --user=%s", *proxy, *user, *proxy, *user)
	}
	if err != nil {
		return err
	}
	certPEM, err := os.ReadFile(filepath.Join(dir, fileTLSCert))
	if err != nil {
		return fmt.Errorf("the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, fileTLSKey))
	if err != nil {
		return fmt.Errorf("the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return fmt.Errorf("%s holds no certificate; run tsh login again", filepath.Join(dir, fileTLSCert))
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w; run tsh login again", filepath.Join(dir, fileTLSCert), err)
	}
	if !r.stdio.Now().Before(leaf.NotAfter) {
		return fmt.Errorf("your fleet login expired at %s: run tsh login --proxy=%s --user=%s, then kubectl again", cli.Time(leaf.NotAfter), p.Proxy, p.User)
	}
	out, err := kubeconfig.ExecCredential(certPEM, keyPEM, leaf.NotAfter)
	if err != nil {
		return err
	}
	_, err = r.stdio.Out.Write(out)
	return err
}
