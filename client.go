package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// socketPath is the sidecar's socket, from FENDER_SOCKET. The client commands
// read only this variable, so that a probe never fails on the rest.
func socketPath() string {
	if p := os.Getenv("FENDER_SOCKET"); p != "" {
		return p
	}
	return "/tmp/fender.sock"
}

// ask sends one request to the running sidecar, prints the answer line and
// returns 0 when it is ok, 1 otherwise.
func ask(stdout, stderr io.Writer, req map[string]any) int {
	req["id"] = 1
	line, err := json.Marshal(req)
	if err != nil {
		fmt.Fprintf(stderr, "fender: %v\n", err)
		return 2
	}
	c, err := net.DialTimeout("unix", socketPath(), 5*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "fender: connect to %s: %v\n", socketPath(), err)
		return 1
	}
	defer c.Close()
	if req["op"] != "call" {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := c.Write(append(line, '\n')); err != nil {
		fmt.Fprintf(stderr, "fender: send: %v\n", err)
		return 1
	}
	br := bufio.NewReaderSize(c, 64<<10)
	for {
		answer, err := br.ReadBytes('\n')
		if err != nil {
			fmt.Fprintf(stderr, "fender: read answer: %v\n", err)
			return 1
		}
		var a struct {
			ID json.RawMessage `json:"id"`
			OK bool            `json:"ok"`
		}
		if json.Unmarshal(answer, &a) != nil || string(a.ID) != "1" {
			continue
		}
		stdout.Write(answer)
		if a.OK {
			return 0
		}
		return 1
	}
}

// callCmd is `fender call UPSTREAM PATH [JSON_BODY]`.
func callCmd(stdout, stderr io.Writer, args []string) int {
	if len(args) < 2 || len(args) > 3 {
		return usage(stderr)
	}
	req := map[string]any{"op": "call", "upstream": args[0], "path": args[1]}
	if len(args) == 3 {
		if !json.Valid([]byte(args[2])) {
			fmt.Fprintln(stderr, "fender: JSON_BODY is not valid JSON")
			return 2
		}
		req["body"] = json.RawMessage(args[2])
	} else {
		req["method"] = "GET"
	}
	return ask(stdout, stderr, req)
}
