package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// splitYAML splits a YAML stream into its documents at "---" lines (a
// "..." line ends a document). Comments after "---" are dropped.
func splitYAML(data []byte) [][]byte {
	var (
		docs [][]byte
		cur  bytes.Buffer
	)
	flush := func() {
		docs = append(docs, bytes.Clone(cur.Bytes()))
		cur.Reset()
	}
	for line := range strings.Lines(string(data)) {
		trimmed := strings.TrimRight(line, " \t\r\n")
		switch {
		case trimmed == "---" || strings.HasPrefix(trimmed, "--- ") || strings.HasPrefix(trimmed, "---\t"):
			flush()
			if rest := strings.TrimSpace(trimmed[3:]); rest != "" && !strings.HasPrefix(rest, "#") {
				cur.WriteString(rest + "\n")
			}
		case trimmed == "...":
			flush()
		default:
			cur.WriteString(line)
		}
	}
	flush()
	return docs
}

// parseRoles decodes role resources from a YAML stream with one or more
// documents, each a role or a listing of roles (the "kind: roles" object of
// roles ls --format=yaml or json). Unknown fields are errors that name the
// field and its place, so a typo ("allw") does not silently drop a rule.
// Empty documents are skipped; no role at all is an error.
func parseRoles(data []byte) ([]api.Role, error) {
	var roles []api.Role
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
		if obj, ok := generic.(map[string]any); ok && obj["kind"] == "roles" {
			items, ok := obj["items"].([]any)
			if !ok {
				return nil, fmt.Errorf("%s: a listing of roles (kind: roles) needs items: [...]", where)
			}
			for k, item := range items {
				role, err := parseRole(fmt.Sprintf("%s, item %d", where, k+1), item)
				if err != nil {
					return nil, err
				}
				roles = append(roles, role)
			}
			continue
		}
		role, err := parseRole(where, generic)
		if err != nil {
			return nil, err
		}
		roles = append(roles, role)
	}
	if len(roles) == 0 {
		return nil, errors.New("no role in the file; a role starts with kind: role")
	}
	return roles, nil
}

// parseRole decodes and checks one role, decoded from JSON as generic;
// where names it in errors.
func parseRole(where string, generic any) (api.Role, error) {
	var role api.Role
	obj, ok := generic.(map[string]any)
	if !ok {
		return role, fmt.Errorf("%s: want a role (kind: role, metadata, spec), not a %s", where, jsonKind(generic))
	}
	if md, ok := obj["metadata"].(map[string]any); ok {
		if name, ok := md["name"].(string); ok && name != "" {
			where += fmt.Sprintf(" (role %q)", name)
		}
	}
	if unknown := unknownFields(generic, reflect.TypeFor[api.Role](), ""); len(unknown) > 0 {
		return role, fmt.Errorf("%s: unknown field %s; check its spelling against the role format (fleetctl roles create --help)", where, strings.Join(unknown, ", "))
	}
	normalizeRole(obj)
	j, err := json.Marshal(obj)
	if err != nil {
		return role, fmt.Errorf("%s: %w", where, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&role); err != nil {
		return role, fmt.Errorf("%s: %s", where, cleanYAMLError(err))
	}
	switch {
	case role.Kind == "":
		return role, fmt.Errorf("%s: no kind; a role starts with kind: role", where)
	case role.Kind != "role":
		return role, fmt.Errorf("%s: kind is %q; fleetctl roles create takes kind: role", where, role.Kind)
	case role.Version == "":
		role.Version = "v1"
	case role.Version != "v1":
		return role, fmt.Errorf("%s: version %q is not supported; use version: v1", where, role.Version)
	}
	if role.Metadata.Name == "" {
		return role, fmt.Errorf("%s: no metadata.name; name the role", where)
	}
	return role, nil
}

// normalizeRole accepts a single value where a role takes a list, as people
// write it in YAML: "logins: pi" for [pi], "device_labels: {site: north}"
// for {site: [north]}, and so in app_labels.
func normalizeRole(role map[string]any) {
	spec, _ := role["spec"].(map[string]any)
	for _, side := range []string{"allow", "deny"} {
		cond, _ := spec[side].(map[string]any)
		if cond == nil {
			continue
		}
		if s, ok := cond["logins"].(string); ok {
			cond["logins"] = []any{s}
		}
		for _, field := range []string{"device_labels", "app_labels"} {
			if labels, ok := cond[field].(map[string]any); ok {
				for k, v := range labels {
					if s, ok := v.(string); ok {
						labels[k] = []any{s}
					}
				}
			}
		}
	}
}

// unknownFields lists the keys of a decoded JSON value that type t has no
// field for, as dotted paths (spec.allw).
func unknownFields(v any, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	var out []string
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil // a type error; the decoder reports it
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[strings.ToLower(name)] = f.Type
		}
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			ft, ok := fields[strings.ToLower(k)]
			if !ok {
				out = append(out, fmt.Sprintf("%q", join(k)))
				continue
			}
			out = append(out, unknownFields(obj[k], ft, join(k))...)
		}
	case reflect.Map:
		if obj, ok := v.(map[string]any); ok {
			for _, k := range slices.Sorted(maps.Keys(obj)) {
				out = append(out, unknownFields(obj[k], t.Elem(), join(k))...)
			}
		}
	case reflect.Slice, reflect.Array:
		if arr, ok := v.([]any); ok {
			for i, e := range arr {
				out = append(out, unknownFields(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
			}
		}
	}
	return out
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "list"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	}
	return "value"
}

// cleanYAMLError drops the layers of prefixes sigs.k8s.io/yaml and
// encoding/json put on an error.
func cleanYAMLError(err error) string {
	s := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: ", "yaml: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return s
}

// roleFormat documents the role file, for roles create's help.
const roleFormat = `A role file is YAML; several roles are separated by ---:

  kind: role
  version: v1
  metadata:
    name: field-tech
    description: field technicians          # optional
  spec:
    allow:
      logins: ["{{internal.logins}}", pi]   # {{internal.logins}}: the user's --logins
      device_labels: {site: [north, south]} # "*" matches any value
      kubernetes_groups: [viewers]          # Kubernetes access (see docs/kubernetes.md)
      admin: false                          # true: the admin API (users, roles, ...)
    deny:                                   # deny wins over allow
      logins: [root]
      device_labels: {"*": "*"}
    options:
      max_session_ttl: 8h

A role of the same name is replaced. Unknown fields are errors, so a typo
does not silently drop a rule.`

func (r *runner) rolesCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "roles",
		Short: "Create, list and remove roles: who may reach which devices as whom",
	}
	var roleFile string
	create := r.roleCreateCommand("create", &roleFile)
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the roles",
		Long: `List the roles. Their --format=yaml (or json) listing is also a role file:
fleetctl roles create -f takes it back.`,
		Args: cli.NoArgs,
	}
	format := cli.FormatFlag(ls, "")
	ls.RunE = func(cmd *cobra.Command, _ []string) error { return r.rolesLs(cmd.Context(), *format) }
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a role",
	}, (*client.Client).RemoveRole, "Role %q removed.", r.names(r.roleNames))
	group.AddCommand(create, ls, rm)
	return group
}

// roleCreateCommand is a command that writes the roles of a file.
func (r *runner) roleCreateCommand(use string, file *string) *cobra.Command {
	cmd := &cobra.Command{
		Use:     use + " -f ROLE.yaml",
		Short:   "Create or replace roles from a YAML file",
		Long:    roleFormat,
		Example: "  fleetctl roles create -f field-tech.yaml\n  fleetctl create -f - < roles.yaml",
		Args:    cli.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return r.rolesCreate(cmd, *file) },
	}
	cmd.Flags().StringVarP(file, "filename", "f", "", "the role `file` (YAML; several roles separated by ---); - reads standard input")
	cmd.MarkFlagFilename("filename", "yaml", "yml")
	return cmd
}

// roleNames offers the fleet's roles.
func (r *runner) roleNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	roles, err := c.Roles(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(roles))
	for _, role := range roles {
		out = append(out, cli.Completion(role.Metadata.Name, role.Metadata.Description))
	}
	return out, nil
}

func (r *runner) rolesCreate(cmd *cobra.Command, file string) error {
	data, err := r.readManifest(cmd, "roles create", file, "ROLE.yaml")
	if err != nil {
		return err
	}
	roles, err := parseRoles(data)
	if err != nil {
		return fmt.Errorf("roles create: %s: %w", file, err)
	}
	resources := make([]resource, len(roles))
	for i := range roles {
		resources[i].role = &roles[i]
	}
	return r.apply(cmd.Context(), "roles create", resources)
}

func (r *runner) rolesLs(ctx context.Context, format cli.Format) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	roles, err := c.Roles(ctx)
	if err != nil {
		return fmt.Errorf("roles ls: %w", apiHint(err))
	}
	slices.SortFunc(roles, func(a, b api.Role) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	return cli.PrintList(r.stdio.Out, format, "roles", roles, false, func() error { return r.rolesTable(roles) })
}

func (r *runner) rolesTable(roles []api.Role) error {
	tw := cli.NewTable(r.stdio.Out, "NAME", "LOGINS", "DEVICE LABELS", "DENY LOGINS", "ADMIN", "MAX TTL")
	for _, role := range roles {
		admin := "no"
		if role.Spec.Allow.Admin && !role.Spec.Deny.Admin {
			admin = "yes"
		}
		tw.Row(role.Metadata.Name, cli.Dash(strings.Join(role.Spec.Allow.Logins, ",")),
			fmtSelector(role.Spec.Allow.DeviceLabels), cli.Dash(strings.Join(role.Spec.Deny.Logins, ",")), admin,
			cli.Dash(role.Spec.Options.MaxSessionTTL))
	}
	return tw.Flush()
}

// fmtSelector prints device label selectors as site=north|south,env=*.
func fmtSelector(sel map[string][]string) string {
	if len(sel) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(sel)) {
		parts = append(parts, k+"="+strings.Join(sel[k], "|"))
	}
	return strings.Join(parts, ",")
}
