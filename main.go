// Command fender is a resilience sidecar: it accepts newline-delimited JSON
// requests on a Unix socket and runs each through a retrier, a circuit
// breaker and a cache to the upstream HTTP services it is configured with.
// See docs/PROTOCOL.md for the contract.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run dispatches the CLI (SPEC section 10) and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "fender %s\n", version)
		return 0
	case "ping", "health", "stats":
		if len(args) != 0 {
			return usage(stderr)
		}
		return ask(stdout, stderr, map[string]any{"op": cmd})
	case "call":
		return callCmd(stdout, stderr, args)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	return usage(stderr)
}

func usage(w io.Writer) int {
	fmt.Fprint(w, `usage:
  fender [serve]                       run the sidecar (configured by FENDER_* variables)
  fender ping|health|stats             ask the sidecar at FENDER_SOCKET; exit 0 when ok
  fender call UPSTREAM PATH [JSON_BODY] make one call and print the answer
  fender version                       print the version
`)
	return 2
}
