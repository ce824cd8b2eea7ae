package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"

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
// documents. Unknown fields are errors that name the field and its place,
// so a typo ("allw") does not silently drop a rule. Empty documents are
// skipped; no role at all is an error.
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
		obj, ok := generic.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%s: want a role (kind: role, metadata, spec), not a %s", where, jsonKind(generic))
		}
		if md, ok := obj["metadata"].(map[string]any); ok {
			if name, ok := md["name"].(string); ok && name != "" {
				where += fmt.Sprintf(" (role %q)", name)
			}
		}
		if unknown := unknownFields(generic, reflect.TypeFor[api.Role](), ""); len(unknown) > 0 {
			return nil, fmt.Errorf("%s: unknown field %s; check its spelling against the role format (fleetctl help)", where, strings.Join(unknown, ", "))
		}
		normalizeRole(obj)
		if j, err = json.Marshal(obj); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		dec := json.NewDecoder(bytes.NewReader(j))
		dec.DisallowUnknownFields()
		var role api.Role
		if err := dec.Decode(&role); err != nil {
			return nil, fmt.Errorf("%s: %s", where, cleanYAMLError(err))
		}
		switch {
		case role.Kind == "":
			return nil, fmt.Errorf("%s: no kind; a role starts with kind: role", where)
		case role.Kind != "role":
			return nil, fmt.Errorf("%s: kind is %q; fleetctl roles create takes kind: role", where, role.Kind)
		case role.Version == "":
			role.Version = "v1"
		case role.Version != "v1":
			return nil, fmt.Errorf("%s: version %q is not supported; use version: v1", where, role.Version)
		}
		if role.Metadata.Name == "" {
			return nil, fmt.Errorf("%s: no metadata.name; name the role", where)
		}
		roles = append(roles, role)
	}
	if len(roles) == 0 {
		return nil, errors.New("no role in the file; a role starts with kind: role")
	}
	return roles, nil
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

func (r *runner) rolesCreate(ctx context.Context, fs *flag.FlagSet, args []string) error {
	file := fs.String("f", "", "the role `file` (YAML; several roles separated by ---); - reads standard input")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if *file == "" {
		return r.usageError(fs, "-f ROLE.yaml is required")
	}
	var (
		data []byte
		err  error
	)
	if *file == "-" {
		data, err = io.ReadAll(r.stdio.In)
	} else {
		data, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("roles create: %w", err)
	}
	roles, err := parseRoles(data)
	if err != nil {
		return fmt.Errorf("roles create: %s: %w", *file, err)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	for _, role := range roles {
		if err := c.PutRole(ctx, &role); err != nil {
			return fmt.Errorf("roles create: role %q: %w", role.Metadata.Name, apiHint(err))
		}
		fmt.Fprintf(r.stdio.Out, "Role %q written.\n", role.Metadata.Name)
	}
	return nil
}

func (r *runner) rolesLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	format := fs.String("format", "text", "output format: text, json or yaml (yaml can be fed back to roles create)")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if !slices.Contains([]string{"text", "json", "yaml"}, *format) {
		return r.usageError(fs, "--format must be text, json or yaml, not %q", *format)
	}
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
	switch *format {
	case "json":
		return r.printJSON(roles)
	case "yaml":
		for i, role := range roles {
			b, err := yaml.Marshal(role)
			if err != nil {
				return err
			}
			if i > 0 {
				fmt.Fprintln(r.stdio.Out, "---")
			}
			r.stdio.Out.Write(b)
		}
		return nil
	}
	tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tLOGINS\tDEVICE LABELS\tDENY LOGINS\tADMIN\tMAX TTL")
	for _, role := range roles {
		admin := "no"
		if role.Spec.Allow.Admin && !role.Spec.Deny.Admin {
			admin = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", role.Metadata.Name, cli.Dash(strings.Join(role.Spec.Allow.Logins, ",")),
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

func (r *runner) rolesRm(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "roles rm", (*client.Client).RemoveRole, "Role %q removed.")
}
