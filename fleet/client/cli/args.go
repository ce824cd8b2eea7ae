package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// NoArgs refuses positional arguments.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return Usagef(cmd, "unexpected argument %q", args[0])
	}
	return nil
}

// ExactArgs wants n positional arguments; what names them in the error
// ("NAME", "RECORDING_ID").
func ExactArgs(n int, what string) cobra.PositionalArgs {
	return RangeArgs(n, n, what)
}

// RangeArgs wants min to max positional arguments (max < 0: no limit).
func RangeArgs(min, max int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < min:
			return Usagef(cmd, "missing %s", what)
		case max >= 0 && len(args) > max:
			return Usagef(cmd, "unexpected argument %q", args[max])
		}
		return nil
	}
}

// CompleteTimeout bounds what a completion asks the fleet: a TAB must not
// hang on a fleet that does not answer.
const CompleteTimeout = 3 * time.Second

// Completer lists the candidates for an argument: names with a short
// description (cobra.CompletionWithDesc). It may call the fleet; errors
// mean no candidates.
type Completer func(ctx context.Context, cmd *cobra.Command) ([]cobra.Completion, error)

// CompleteArgs returns a ValidArgsFunction that offers list's candidates
// for the first n positional arguments (n < 0: all of them), filtered by
// what is typed so far, and never file names.
func CompleteArgs(n int, list Completer) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if n >= 0 && len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return Filter(Candidates(cmd, list), toComplete, ""), cobra.ShellCompDirectiveNoFileComp
	}
}

// Candidates calls list with a context bounded by CompleteTimeout.
func Candidates(cmd *cobra.Command, list Completer) []cobra.Completion {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, CompleteTimeout)
	defer cancel()
	all, err := list(ctx, cmd)
	if err != nil {
		cobra.CompDebugln("completion: "+err.Error(), false)
		return nil
	}
	return all
}

// Filter keeps the candidates that start with toComplete (after prefix,
// which is put back in front of each: "root@" for tsh ssh root@<TAB>).
func Filter(all []cobra.Completion, toComplete, prefix string) []cobra.Completion {
	typed := strings.TrimPrefix(toComplete, prefix)
	var out []cobra.Completion
	for _, c := range all {
		if strings.HasPrefix(c, typed) {
			out = append(out, prefix+c)
		}
	}
	return out
}

// CompleteValues completes a flag whose values are fixed (--format).
func CompleteValues(values ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return Filter(values, toComplete, ""), cobra.ShellCompDirectiveNoFileComp
	}
}
