package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long a fresh fender may take to answer a ping.
	readyTimeout = 10 * time.Second
	// stopTimeout is how long fender may take to exit after SIGTERM before it
	// is killed.
	stopTimeout = 10 * time.Second
	// runTimeout bounds a one-shot run (a CLI command, a bad configuration).
	runTimeout = 10 * time.Second
)

// Fender is one running fender process.
type Fender struct {
	Socket string

	cmd    *exec.Cmd
	stdout *logBuffer
	stderr *logBuffer
	exited chan struct{}

	mu     sync.Mutex
	client *Client
}

// startFender runs the binary with env on top of the defaults (a fresh
// socket, metrics off), waits until it answers a ping and stops it with
// SIGTERM when the test ends. args go on the command line (e.g. "serve").
func startFender(t testing.TB, env map[string]string, args ...string) *Fender {
	t.Helper()
	sock := env["FENDER_SOCKET"]
	if sock == "" {
		sock = socketPath(t)
	}
	f := launchFender(t, sock, env, args...)
	t.Cleanup(func() {
		f.closeClient()
		code := f.Stop()
		if t.Failed() {
			t.Logf("fender (exit %d) stderr:\n%s", code, tail(f.Stderr(), 16<<10))
		}
	})
	f.waitReady(t)
	return f
}

// launchFender starts the process without waiting for it to serve.
func launchFender(t testing.TB, sock string, env map[string]string, args ...string) *Fender {
	t.Helper()
	f := &Fender{
		Socket: sock,
		stdout: newLogBuffer(),
		stderr: newLogBuffer(),
		exited: make(chan struct{}),
	}
	f.cmd = exec.Command(fenderBin, args...)
	f.cmd.Env = fenderEnv(sock, env)
	f.cmd.Stdout = f.stdout
	f.cmd.Stderr = f.stderr
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start fender: %v", err)
	}
	go func() {
		_ = f.cmd.Wait()
		close(f.exited)
	}()
	return f
}

// fenderEnv is the environment of a fender process: ours without any
// FENDER_ variable, then the defaults of the suite, then env.
func fenderEnv(sock string, env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FENDER_") {
			out = append(out, kv)
		}
	}
	merged := map[string]string{"FENDER_SOCKET": sock, "FENDER_METRICS_ADDR": ""}
	maps.Copy(merged, env)
	for _, k := range slices.Sorted(maps.Keys(merged)) {
		out = append(out, k+"="+merged[k])
	}
	return out
}

func (f *Fender) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for {
		select {
		case <-f.exited:
			t.Fatalf("fender exited with status %d before serving; stderr:\n%s",
				f.ExitCode(), tail(f.Stderr(), 8<<10))
		default:
		}
		if lastErr = pingOnce(f.Socket); lastErr == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fender not answering a ping on %s after %v: %v; stderr:\n%s",
				f.Socket, readyTimeout, lastErr, tail(f.Stderr(), 8<<10))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pingOnce dials sock, sends {"id":0,"op":"ping"} and checks the answer.
func pingOnce(sock string) error {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte(`{"id":0,"op":"ping"}` + "\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return err
	}
	var r struct {
		ID json.RawMessage `json:"id"`
		OK bool            `json:"ok"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("ping answer %q: %w", line, err)
	}
	if string(r.ID) != "0" || !r.OK {
		return fmt.Errorf("ping answer %q, want id 0 and ok true", line)
	}
	return nil
}

// Client is the connection shared by the calls made through f.Call. It
// lives as long as f.
func (f *Fender) Client(t testing.TB) *Client {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.client == nil {
		c, err := dialClient(f.Socket)
		if err != nil {
			t.Fatalf("dial %s: %v", f.Socket, err)
		}
		f.client = c
	}
	return f.client
}

func (f *Fender) closeClient() {
	f.mu.Lock()
	c := f.client
	f.client = nil
	f.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Call sends req on the shared connection and waits for its answer.
func (f *Fender) Call(t testing.TB, req Req) Resp {
	t.Helper()
	return f.Client(t).Call(t, req)
}

// Dial opens a new connection, closed when the test ends.
func (f *Fender) Dial(t testing.TB) *Client {
	t.Helper()
	return Dial(t, f.Socket)
}

// Signal sends sig to the process.
func (f *Fender) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := f.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// WaitExit waits for the process to exit and returns its status.
func (f *Fender) WaitExit(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-f.exited:
		return f.ExitCode()
	case <-time.After(d):
		t.Fatalf("fender still running %v later", d)
		return -1
	}
}

// Exited reports whether the process has exited.
func (f *Fender) Exited() bool {
	select {
	case <-f.exited:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status once the process has exited, -1 when a
// signal killed it.
func (f *Fender) ExitCode() int {
	<-f.exited
	return f.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM, waits up to stopTimeout, then kills. It returns the
// exit status.
func (f *Fender) Stop() int {
	if !f.Exited() {
		_ = f.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.exited:
		case <-time.After(stopTimeout):
			_ = f.cmd.Process.Kill()
		}
	}
	return f.ExitCode()
}

// Stderr is everything fender wrote on stderr so far.
func (f *Fender) Stderr() string { return f.stderr.String() }

// WaitStderr waits until pred holds for some line of stderr.
func (f *Fender) WaitStderr(pred func(line string) bool, d time.Duration) bool {
	return f.stderr.WaitFor(func(s string) bool {
		return slices.ContainsFunc(strings.Split(s, "\n"), pred)
	}, d)
}

// runResult is the outcome of a one-shot run of the binary.
type runResult struct {
	Code   int
	Stdout string
	Stderr string
}

// runFender runs the binary to completion (at most runTimeout) with env on
// top of the suite's defaults.
func runFender(t testing.TB, env map[string]string, args ...string) runResult {
	t.Helper()
	sock := env["FENDER_SOCKET"]
	if sock == "" {
		sock = socketPath(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, fenderBin, args...)
	cmd.Env = fenderEnv(sock, env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("fender %v still running after %v; stderr:\n%s", args, runTimeout, tail(stderr.String(), 8<<10))
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("run fender %v: %v", args, err)
	}
	return runResult{Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}
}

// socketPath is a fresh socket path in a short temporary directory removed
// when the test ends; Unix socket paths must stay under 108 bytes.
func socketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fe")
	if err == nil && len(dir) > 80 {
		os.RemoveAll(dir)
		dir, err = os.MkdirTemp("/tmp", "fe")
	}
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "f.sock")
}

// logBuffer is an io.Writer safe for concurrent use that can be waited on.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return n, err
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor waits until pred holds for the whole content, at most d.
func (b *logBuffer) WaitFor(pred func(string) bool, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		b.mu.Lock()
		s, ch := b.buf.String(), b.changed
		b.mu.Unlock()
		if pred(s) {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return pred(b.String())
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}
