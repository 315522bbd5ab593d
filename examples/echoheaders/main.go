// Command echoheaders is the application of the README's walkthrough of
// the native listener: an HTTP server that answers every request with the
// IP address it came from and the request's headers, one per line, sorted
// by name, so that curl shows what realipd added (x-real-ip). It logs
// nothing per request and is not meant for anything else.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "`ADDRESS` to listen on (host:port; \":8080\" is every address, IPv4 and IPv6)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *listen, Handler: http.HandlerFunc(echo), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Printf("echoheaders: listening on %s", *listen)
	select {
	case err := <-served:
		log.Fatal(err)
	case <-ctx.Done(): // SIGTERM or Ctrl-C: stop, exit 0
		srv.Shutdown(context.Background())
	}
}

// echo writes the peer's IP and the headers of r.
func echo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	fmt.Fprintf(w, "from %s\n", host)
	for _, name := range slices.Sorted(maps.Keys(r.Header)) {
		for _, v := range r.Header[name] {
			fmt.Fprintf(w, "%s: %s\n", name, v)
		}
	}
}
