// Command demoapp runs the demo web app (tools/demoapp) that make demo
// puts on its device: a page with a live event stream, a websocket echo
// and an upload.
//
//	demoapp [--listen 127.0.0.1:8089]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/demoapp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8089", "`HOST:PORT` to serve on (port 0: a free one, printed)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		os.Exit(1)
	}
	fmt.Printf("demoapp listening on http://%s\n", ln.Addr())
	srv := &http.Server{Handler: demoapp.Handler(log), ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		os.Exit(1)
	}
}
