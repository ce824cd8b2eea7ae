// Command oidcprovider runs the test OpenID provider of tools/oidcprovider
// on loopback, to try single sign-on against a fleet without a real
// identity provider (docs/sso.md, "Try it locally"):
//
//	oidcprovider --addr 127.0.0.1:9998 \
//	    --client fleet:SECRET:https://127.0.0.1:3080/v1/sso/callback \
//	    --user carol:PASSWORD:carol@example.com:fleet-admins,ops
//
// --client and --user may be given several times. A user's groups are
// comma-separated; the provider sends them as the groups claim (scope
// groups). It prints its issuer URL and serves until interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"remoteler.dev/edge/tools/oidcprovider"
)

// list is a flag given several times.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	addr := flag.String("addr", "127.0.0.1:9998", "`HOST:PORT` to listen on (loopback: the fleet takes http issuers only there)")
	var clients, users list
	flag.Var(&clients, "client", "a client, `ID:SECRET:REDIRECT_URL` (repeatable)")
	flag.Var(&users, "user", "a user, `NAME:PASSWORD:EMAIL[:GROUP,...]` (repeatable)")
	flag.Parse()
	cfg := oidcprovider.Config{Addr: *addr, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	for _, c := range clients {
		parts := strings.SplitN(c, ":", 3)
		if len(parts) != 3 {
			fmt.Fprintf(os.Stderr, "oidcprovider: --client %q is not ID:SECRET:REDIRECT_URL\n", c)
			os.Exit(2)
		}
		cfg.Clients = append(cfg.Clients, oidcprovider.Client{ID: parts[0], Secret: parts[1], RedirectURIs: []string{parts[2]}})
	}
	for _, u := range users {
		parts := strings.SplitN(u, ":", 4)
		if len(parts) < 3 {
			fmt.Fprintf(os.Stderr, "oidcprovider: --user %q is not NAME:PASSWORD:EMAIL[:GROUP,...]\n", u)
			os.Exit(2)
		}
		user := oidcprovider.User{Username: parts[0], Password: parts[1], Email: parts[2], EmailVerified: true}
		if len(parts) == 4 && parts[3] != "" {
			user.Groups = strings.Split(parts[3], ",")
		}
		cfg.Users = append(cfg.Users, user)
	}
	p, err := oidcprovider.Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("issuer: %s\n", p.Issuer)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	p.Close()
}
