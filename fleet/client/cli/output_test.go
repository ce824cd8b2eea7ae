package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// hostile holds what a device could put in its version or audit strings.
var hostile = []string{
	"v1\x1b]52;c;ZXZpbA==\x07",  // OSC 52: write the clipboard
	"ok\r\x1b[2K\x1b[1A",        // erase the line, move up
	"a\u009b2Jb",                // C1 CSI
	"abc\u202efdp.exe",          // right-to-left override
	"line\nnext\tcol\u2028more", // breaks a table
	"plain-1.2.3",
}

func TestPrintValueEscapes(t *testing.T) {
	list := api.NewList("devices", []api.Device{{Name: "d", AgentVersion: hostile[0], OS: hostile[2], Arch: hostile[3],
		Labels: map[string]string{hostile[1]: hostile[4]}}}, true)
	for _, f := range []Format{JSON, YAML} {
		t.Run(string(f), func(t *testing.T) {
			var out bytes.Buffer
			if err := PrintValue(&out, f, list); err != nil {
				t.Fatal(err)
			}
			for _, r := range out.String() {
				if printable.Unsafe(r) && r != '\n' {
					t.Fatalf("output holds %U:\n%s", r, out.String())
				}
			}
			j := out.Bytes()
			if f == YAML {
				var err error
				if j, err = yaml.YAMLToJSON(j); err != nil {
					t.Fatalf("not YAML: %v\n%s", err, out.String())
				}
			}
			var got api.List[api.Device]
			if err := json.Unmarshal(j, &got); err != nil {
				t.Fatalf("does not decode: %v\n%s", err, out.String())
			}
			d := got.Items[0]
			if got.Kind != "devices" || !got.Truncated || d.AgentVersion != hostile[0] || d.OS != hostile[2] || d.Arch != hostile[3] || d.Labels[hostile[1]] != hostile[4] {
				t.Errorf("the values did not come back exact: %+v\n%s", got, out.String())
			}
		})
	}
}

func TestPrintListShape(t *testing.T) {
	var out bytes.Buffer
	if err := PrintList[api.User](&out, JSON, "users", nil, false, nil); err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"kind\": \"users\",\n  \"items\": [],\n  \"truncated\": false\n}\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	out.Reset()
	PrintList[api.User](&out, YAML, "users", nil, false, nil)
	if want := "items: []\nkind: users\ntruncated: false\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestTableEscapes(t *testing.T) {
	var out bytes.Buffer
	tw := NewTable(&out, "NAME", "VERSION")
	for _, h := range hostile {
		tw.Row("dev", h)
	}
	tw.Flush()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1+len(hostile) {
		t.Fatalf("got %d lines, want %d (a cell broke the table):\n%s", len(lines), 1+len(hostile), out.String())
	}
	for _, r := range out.String() {
		if printable.Unsafe(r) && r != '\n' {
			t.Fatalf("table holds %U:\n%s", r, out.String())
		}
	}
	if !strings.Contains(out.String(), `v1\x1b]52;c;ZXZpbA==\x07`) || !strings.Contains(out.String(), `abc\u202efdp.exe`) {
		t.Errorf("escapes not shown:\n%s", out.String())
	}
}

func TestExecute(t *testing.T) {
	tree := func() *cobra.Command {
		root := &cobra.Command{Use: "prog", Version: "v9"}
		group := &cobra.Command{Use: "things", Short: "Things"}
		group.AddCommand(&cobra.Command{Use: "ls", Short: "List things", Args: NoArgs, RunE: func(*cobra.Command, []string) error { return nil }})
		group.AddCommand(&cobra.Command{Use: "fail", Short: "Fail", RunE: func(*cobra.Command, []string) error {
			return errors.New("no \x1b[2Kthing")
		}})
		group.AddCommand(&cobra.Command{Use: "exit", Short: "Exit 7", RunE: func(*cobra.Command, []string) error {
			return &StatusError{Code: 7}
		}})
		group.AddCommand(&cobra.Command{Use: "wait", Short: "Wait for Ctrl-C", RunE: func(cmd *cobra.Command, _ []string) error {
			<-cmd.Context().Done()
			return cmd.Context().Err()
		}})
		root.AddCommand(group)
		return Setup(root)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name             string
		ctx              context.Context
		args             []string
		code             int
		wantOut, wantErr string
		wantNoOut        bool
	}{
		{"bare program is its help", nil, nil, 0, "Available Commands:", "", false},
		{"bare group is its help", nil, []string{"things"}, 0, "List things", "", false},
		{"help of a group", nil, []string{"help", "things"}, 0, "List things", "", false},
		{"group --help", nil, []string{"things", "--help"}, 0, "List things", "", false},
		{"mistyped command", nil, []string{"thigns"}, 1, "", "prog: unknown command \"thigns\" for \"prog\"; did you mean \"things\"?\nRun 'prog --help' for usage.\n", true},
		{"mistyped subcommand", nil, []string{"things", "lss"}, 1, "", `did you mean "ls"?`, true},
		{"unknown help topic", nil, []string{"help", "things", "lz"}, 1, "", `did you mean "ls"?`, true},
		{"stray argument", nil, []string{"things", "ls", "x"}, 1, "", "prog: unexpected argument \"x\"\nRun 'prog things ls --help' for usage.\n", true},
		{"bad flag", nil, []string{"things", "ls", "--nope"}, 1, "", "prog: unknown flag: --nope\nRun 'prog things ls --help' for usage.\n", true},
		{"error is escaped", nil, []string{"things", "fail"}, 1, "", "prog: no \\x1b[2Kthing\n", true},
		{"status passes through", nil, []string{"things", "exit"}, 7, "", "", true},
		{"interrupted", canceled, []string{"things", "wait"}, 130, "", "prog: interrupted\n", true},
		{"version", nil, []string{"version"}, 0, "prog v9\n", "", false},
		{"--version", nil, []string{"--version"}, 0, "prog v9\n", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			var out, errb bytes.Buffer
			code := Execute(ctx, tree(), tt.args, strings.NewReader(""), &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.wantOut) || !strings.Contains(errb.String(), tt.wantErr) || (tt.wantNoOut && out.Len() > 0) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q in stdout, %q in stderr", code, out.String(), errb.String(), tt.code, tt.wantOut, tt.wantErr)
			}
			if tt.wantErr == "" && errb.Len() > 0 {
				t.Errorf("stderr %q, want none", errb.String())
			}
		})
	}
}
