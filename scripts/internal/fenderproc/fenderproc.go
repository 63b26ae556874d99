// Package fenderproc builds the fender binary and runs it (or another
// server, such as haproxy) as a child process for the load tools in
// scripts/: start, wait until it listens, stop with a signal and a time
// limit, keep its output for error messages.
package fenderproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ModuleRoot finds the fender module's root upward from the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/fender-sidecar/fender\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the fender module; run from the repository root or pass -fender")
		}
		dir = parent
	}
}

// Build builds fender into dir, stamped with version, and returns its path.
func Build(ctx context.Context, dir, version string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fender")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "-ldflags", "-X main.version="+version, ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fender in %s: %v\n%s", root, err, out)
	}
	return bin, nil
}

// FenderCmd is a command running bin with exactly env as its FENDER_
// configuration: FENDER_ variables of this process are not passed on.
func FenderCmd(bin string, env map[string]string) *exec.Cmd {
	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FENDER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// Proc is a started child process. Safe for concurrent use.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	Output *Buffer // its stdout and stderr
	exited chan struct{}
	once   sync.Once
	code   int
}

// Start starts cmd, collecting its output.
func Start(name string, cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Name: name, Cmd: cmd, Output: &Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Output, p.Output
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// PID is the process id.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Stop sends sig, waits up to wait, then kills; it returns the exit status
// (-1 when killed by a signal). Safe to call more than once.
func (p *Proc) Stop(sig os.Signal, wait time.Duration) int {
	p.once.Do(func() {
		_ = p.Cmd.Process.Signal(sig)
		select {
		case <-p.exited:
		case <-time.After(wait):
			_ = p.Cmd.Process.Kill()
			<-p.exited
		}
		p.code = p.Cmd.ProcessState.ExitCode()
	})
	return p.code
}

// WaitReady polls ready (e.g. a dial or a ping of sock) until it succeeds,
// the process exits, ctx ends or 10 seconds pass.
func (p *Proc) WaitReady(ctx context.Context, what string, ready func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before serving; output:\n%s", p.Name, Tail(p.Output.String(), 4096))
		default:
		}
		err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready on %s: %v; output:\n%s", p.Name, what, err, Tail(p.Output.String(), 4096))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Dial is a readiness check: something accepts connections on sock.
func Dial(sock string) func() error {
	return func() error {
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	}
}

// Buffer is a bytes.Buffer safe for concurrent writes and reads.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
