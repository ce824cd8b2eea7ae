package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// connectorFormat documents the connector file, for create's help.
const connectorFormat = `A single sign-on connector (OpenID Connect) is YAML too (docs/sso.md):

  kind: oidc
  version: v1
  metadata:
    name: okta                              # tsh login --auth=okta
  spec:
    issuer_url: https://example.okta.com    # the provider's issuer
    client_id: 0oa1example                  # the fleet's client at the provider
    client_secret: s3cret                   # stored, never shown again
    scopes: [email, profile, groups]        # besides openid (default email, profile)
    username_claim: email                   # names the fleet user (default email)
    claims_to_traits: {logins: unix_login}  # roles read {{external.logins}}
    claims_to_roles:                        # a user no rule matches is refused
    - {claim: groups, value: fleet-admins, roles: [admin]}
    - {claim: email, value: "*@example.com", roles: [access]}
    display: Okta                           # the login button's text
    redirect_url: https://fleet.example.com:3080/v1/sso/callback  # default: the fleet's public_url

Register the redirect address with the provider. Without client_secret, a
connector that exists keeps its secret.`

// resource is one document of a file for fleetctl create: a role or a
// connector.
type resource struct {
	role      *api.Role
	connector *api.OIDCConnector
	trusted   *api.TrustedCluster
}

// parseResources decodes the roles and connectors of a YAML stream: each
// document is a role, a connector (kind: oidc), or a listing of either
// (kind: roles, kind: connectors, as ls --format=yaml prints them).
func parseResources(data []byte) ([]resource, error) {
	var out []resource
	for i, doc := range splitYAML(data) {
		where := fmt.Sprintf("document %d", i+1)
		j, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", where, cleanYAMLError(err))
		}
		if t := bytes.TrimSpace(j); string(t) == "null" || len(t) == 0 {
			continue
		}
		var generic any
		if err := json.Unmarshal(j, &generic); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		obj, _ := generic.(map[string]any)
		kind, _ := obj["kind"].(string)
		switch kind {
		case "roles", "connectors":
			items, ok := obj["items"].([]any)
			if !ok {
				return nil, fmt.Errorf("%s: a listing (kind: %s) needs items: [...]", where, kind)
			}
			for k, item := range items {
				res, err := parseResource(fmt.Sprintf("%s, item %d", where, k+1), item, strings.TrimSuffix(kind, "s"))
				if err != nil {
					return nil, err
				}
				out = append(out, res)
			}
		default:
			res, err := parseResource(where, generic, "")
			if err != nil {
				return nil, err
			}
			out = append(out, res)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no resource in the file; a role starts with kind: role, a connector with kind: oidc, a trusted cluster with kind: trusted_cluster")
	}
	return out, nil
}

// parseResource decodes one document; listing says what a listing's items
// are ("role", "connector"), "" for a lone document.
func parseResource(where string, generic any, listing string) (resource, error) {
	obj, _ := generic.(map[string]any)
	kind, _ := obj["kind"].(string)
	if kind == api.ConnectorKindOIDC || (listing == "connector" && kind == "") {
		c, err := parseConnector(where, obj)
		return resource{connector: c}, err
	}
	if kind == api.TrustedClusterKind {
		tc, err := parseTrusted(where, obj)
		return resource{trusted: tc}, err
	}
	role, err := parseRole(where, generic)
	if err != nil && kind != "" && kind != "role" {
		return resource{}, fmt.Errorf("%s: kind is %q; fleetctl create takes kind: role, kind: oidc and kind: trusted_cluster", where, kind)
	}
	return resource{role: &role}, err
}

// parseConnector decodes and checks one connector document; the fleet
// checks the rest.
func parseConnector(where string, obj map[string]any) (*api.OIDCConnector, error) {
	if md, ok := obj["metadata"].(map[string]any); ok {
		if name, ok := md["name"].(string); ok && name != "" {
			where += fmt.Sprintf(" (connector %q)", name)
		}
	}
	if unknown := unknownFields(obj, reflect.TypeFor[api.OIDCConnector](), ""); len(unknown) > 0 {
		return nil, fmt.Errorf("%s: unknown field %s; check its spelling against the connector format (fleetctl create --help)", where, strings.Join(unknown, ", "))
	}
	if spec, ok := obj["spec"].(map[string]any); ok {
		if s, ok := spec["scopes"].(string); ok {
			spec["scopes"] = []any{s}
		}
	}
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var c api.OIDCConnector
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %s", where, cleanYAMLError(err))
	}
	if c.Kind == "" {
		c.Kind = api.ConnectorKindOIDC
	}
	if c.Version == "" {
		c.Version = "v1"
	}
	if c.Metadata.Name == "" {
		return nil, fmt.Errorf("%s: no metadata.name; name the connector (tsh login --auth=NAME)", where)
	}
	c.Spec.HasSecret = false
	return &c, nil
}

// parseTrusted decodes one trusted_cluster document; the fleet checks the
// rest (and joins the root).
func parseTrusted(where string, obj map[string]any) (*api.TrustedCluster, error) {
	if md, ok := obj["metadata"].(map[string]any); ok {
		if name, ok := md["name"].(string); ok && name != "" {
			where += fmt.Sprintf(" (trusted cluster %q)", name)
		}
	}
	if unknown := unknownFields(obj, reflect.TypeFor[api.TrustedCluster](), ""); len(unknown) > 0 {
		return nil, fmt.Errorf("%s: unknown field %s; check its spelling against the trusted_cluster format (fleetctl create --help)", where, strings.Join(unknown, ", "))
	}
	if spec, ok := obj["spec"].(map[string]any); ok {
		if rules, ok := spec["role_map"].([]any); ok {
			for _, rule := range rules {
				if m, ok := rule.(map[string]any); ok {
					if s, ok := m["local"].(string); ok {
						m["local"] = []any{s}
					}
				}
			}
		}
	}
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var tc api.TrustedCluster
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tc); err != nil {
		return nil, fmt.Errorf("%s: %s", where, cleanYAMLError(err))
	}
	if tc.Version == "" {
		tc.Version = "v1"
	}
	if tc.Metadata.Name == "" {
		return nil, fmt.Errorf("%s: no metadata.name; name the trusted cluster after the root fleet's cluster name", where)
	}
	return &tc, nil
}

// trustedFormat documents the trusted_cluster file, for create's help.
const trustedFormat = `A trusted cluster makes this fleet a leaf of a root fleet, whose users
then reach this fleet's devices through the root (docs/trusted-clusters.md):

  kind: trusted_cluster
  version: v1
  metadata:
    name: root                              # the root fleet's cluster name
  spec:
    root_addr: root.example.com:3080        # the root fleet's address
    token: jt_...                           # on the root: fleetctl tokens add --type=trusted-cluster
    ca_pin: sha256:...                      # the root's CA pin (fleetctl status there)
    role_map:                               # the root's roles -> this fleet's; no match: refused
    - {remote: admin, local: [admin]}
    - {remote: "site-*", local: [access]}   # a glob
    - {remote: "^ops-(.*)$", local: ["operator-$1"]}  # a regular expression and its capture
    audit_search: false                     # true: the root's admins search this fleet's audit

The fleet joins the root at once; the token is used then and never kept.
Written again, the resource changes the role map and audit_search.`

// createCommand is "fleetctl create -f FILE", as kubectl create: roles,
// connectors and trusted clusters.
func (r *runner) createCommand() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:     "create -f FILE.yaml",
		Short:   "Create or replace roles, single sign-on connectors and trusted clusters from a YAML file",
		Long:    roleFormat + "\n\n" + connectorFormat + "\n\n" + trustedFormat,
		Example: "  fleetctl create -f field-tech.yaml\n  fleetctl create -f okta.yaml\n  fleetctl create -f trusted-root.yaml\n  fleetctl create -f - < roles.yaml",
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return r.create(cmd, file) },
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the `file` (YAML; several resources separated by ---); - reads standard input")
	cmd.MarkFlagFilename("filename", "yaml", "yml")
	return cmd
}

func (r *runner) create(cmd *cobra.Command, file string) error {
	data, err := r.readManifest(cmd, "create", file, "FILE.yaml")
	if err != nil {
		return err
	}
	resources, err := parseResources(data)
	if err != nil {
		return fmt.Errorf("create: %s: %w", file, err)
	}
	return r.apply(cmd.Context(), "create", resources)
}

// readManifest reads the file of -f (- is standard input); op names the
// command in errors and what the file holds in the usage error.
func (r *runner) readManifest(cmd *cobra.Command, op, file, what string) ([]byte, error) {
	if file == "" {
		return nil, cli.Usagef(cmd, "-f %s is required", what)
	}
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(r.stdio.In)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return data, nil
}

// apply writes resources to the fleet, in order, and says what it wrote.
func (r *runner) apply(ctx context.Context, op string, resources []resource) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, res := range resources {
		switch {
		case res.role != nil:
			if err := c.PutRole(ctx, res.role); err != nil {
				return fmt.Errorf("%s: role %q: %w", op, res.role.Metadata.Name, apiHint(err))
			}
			fmt.Fprintf(r.stdio.Out, "Role %q written.\n", res.role.Metadata.Name)
		case res.connector != nil:
			conn := res.connector
			if err := c.PutConnector(ctx, conn); err != nil {
				return fmt.Errorf("%s: connector %q: %w", op, conn.Metadata.Name, apiHint(err))
			}
			secret := "its stored client secret kept"
			if conn.Spec.ClientSecret != "" {
				secret = "client secret stored; it is never shown again"
			}
			fmt.Fprintf(r.stdio.Out, "Connector %q written (%s). Users log in with: tsh login --proxy=... --auth=%s\n", conn.Metadata.Name, secret, conn.Metadata.Name)
		case res.trusted != nil:
			tc := res.trusted
			if err := c.PutTrustedCluster(ctx, tc); err != nil {
				return fmt.Errorf("%s: trusted cluster %q: %w", op, tc.Metadata.Name, apiHint(err))
			}
			fmt.Fprintf(r.stdio.Out, "Trusted cluster %q written: this fleet is its leaf; the tunnel to %s comes up in a moment (fleetctl clusters ls).\n",
				tc.Metadata.Name, tc.Spec.RootAddr)
		}
	}
	return nil
}

func (r *runner) connectorsCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "connectors",
		Short: "List and remove single sign-on connectors (create them with fleetctl create -f)",
	}
	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the single sign-on connectors",
		Long: `List the single sign-on connectors. Client secrets are never shown. The
--format=yaml (or json) listing is also a file for fleetctl create -f,
which keeps the stored secrets.`,
	}, "connectors", (*client.Client).Connectors, r.connectorsTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a single sign-on connector",
		Long: `Remove a single sign-on connector: its users can no longer log in with it.
Their certificates stay valid until they expire; fleetctl users rm ends
their sessions at once.`,
	}, (*client.Client).RemoveConnector, "Connector %q removed.", r.names(r.connectorNames))
	group.AddCommand(ls, rm)
	return group
}

// connectorNames offers the fleet's connectors.
func (r *runner) connectorNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	list, err := c.Connectors(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(list))
	for _, conn := range list {
		out = append(out, cli.Completion(conn.Metadata.Name, conn.Spec.IssuerURL))
	}
	return out, nil
}

func (r *runner) connectorsTable(list []api.OIDCConnector) error {
	slices.SortFunc(list, func(a, b api.OIDCConnector) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	tw := cli.NewTable(r.stdio.Out, "NAME", "ISSUER", "CLIENT ID", "SECRET", "ROLES FROM CLAIMS")
	for _, c := range list {
		secret := "no"
		if c.Spec.HasSecret {
			secret = "stored"
		}
		var rules []string
		for _, m := range c.Spec.ClaimsToRoles {
			rules = append(rules, fmt.Sprintf("%s=%s→%s", m.Claim, m.Value, strings.Join(m.Roles, "+")))
		}
		tw.Row(c.Metadata.Name, c.Spec.IssuerURL, c.Spec.ClientID, secret, cli.Dash(strings.Join(rules, ", ")))
	}
	return tw.Flush()
}
