package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// userHZ is the kernel's clock tick for /proc/PID/stat times (USER_HZ,
// 100 on every Linux architecture Go supports).
const userHZ = 100

// buildFender builds the module root (found upward from the working
// directory) into dir.
func buildFender(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fender")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "-ldflags", "-X main.version=bench", ".")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build fender in %s: %v\n%s", root, err, out)
	}
	return bin, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/fender-sidecar/fender")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the fender module; run from the repository root or pass -fender")
		}
		dir = parent
	}
}

// proc is a child process the tool started: fender or haproxy.
type proc struct {
	name   string
	cmd    *exec.Cmd
	output *syncBuffer
	exited chan struct{}
	once   sync.Once
	code   int
}

func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	p := &proc{name: name, cmd: cmd, output: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.output, p.output
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends sig, waits up to 10s, then kills; it returns the exit status
// (-1 when killed by a signal). Safe to call more than once.
func (p *proc) stop(sig os.Signal) int {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		p.code = p.cmd.ProcessState.ExitCode()
	})
	return p.code
}

// waitSocket waits until something accepts connections on the Unix socket.
func (p *proc) waitSocket(ctx context.Context, sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before serving; output:\n%s", p.name, tail(p.output.String(), 4096))
		default:
		}
		conn, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not listening on %s: %v; output:\n%s", p.name, sock, err, tail(p.output.String(), 4096))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startFender runs bin with only env as its FENDER_ configuration and waits
// until it serves on env["FENDER_SOCKET"].
func startFender(ctx context.Context, bin string, env map[string]string) (*proc, error) {
	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FENDER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p, err := startProc("fender", cmd)
	if err != nil {
		return nil, err
	}
	if err := p.waitSocket(ctx, env["FENDER_SOCKET"]); err != nil {
		p.stop(syscall.SIGKILL)
		return nil, err
	}
	return p, nil
}

// findHAProxy returns the haproxy binary and its version line, or why the
// row is skipped.
func findHAProxy(o options) (bin, version, skip string) {
	if o.skipHAProxy {
		return "", "", "haproxy row skipped (-skip-haproxy)"
	}
	bin = o.haproxy
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("haproxy"); err != nil {
			bin = "/usr/sbin/haproxy"
			if _, err := os.Stat(bin); err != nil {
				return "", "", "haproxy row skipped: haproxy not found (install it with `apt-get install -y haproxy`, or run scripts/bench.sh, which does)"
			}
		}
	}
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "", "", fmt.Sprintf("haproxy row skipped: %s -v: %v", bin, err)
	}
	version, _, _ = strings.Cut(string(out), "\n")
	version, _, _ = strings.Cut(version, " - ")
	return bin, strings.TrimSpace(version), ""
}

const haproxyConfig = `global
    maxconn 4096

defaults
    mode http
    retries 3
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue 5s
    timeout http-request 10s
    timeout http-keep-alive 30s

frontend bench
    bind unix@%s
    default_backend llm

backend llm
    server up %s maxconn 1024
`

// startHAProxy runs haproxy in the foreground (-db) on a Unix socket in
// dir in front of upstream (host:port).
func startHAProxy(ctx context.Context, bin, dir, sock, upstream string) (*proc, error) {
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, haproxyConfig, sock, upstream), 0o600); err != nil {
		return nil, err
	}
	p, err := startProc("haproxy", exec.Command(bin, "-f", cfg, "-db"))
	if err != nil {
		return nil, err
	}
	if err := p.waitSocket(ctx, sock); err != nil {
		p.stop(syscall.SIGKILL)
		return nil, err
	}
	return p, nil
}

// procTree is root and all its descendants, from /proc.
func procTree(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, err := procStat(pid); err == nil {
			children[ppid] = append(children[ppid], pid)
		}
	}
	tree := []int{root}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// procStat reads the parent pid and utime+stime (clock ticks, all threads)
// of pid.
func procStat(pid int) (ppid int, ticks int64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+2:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ppid, ut + st, nil
}

// cpuSeconds sums utime+stime of pids.
func cpuSeconds(pids []int) float64 {
	var t int64
	for _, pid := range pids {
		if _, ticks, err := procStat(pid); err == nil {
			t += ticks
		}
	}
	return float64(t) / userHZ
}

// memMB sums a /proc/PID/status field given in kB ("VmHWM", "VmRSS") over
// pids, in MB (2^20 bytes).
func memMB(pids []int, field string) float64 {
	var kb int64
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				kb += n
			}
		}
	}
	return float64(kb) / 1024
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 { // keep the last output only
		b.buf.Next(b.buf.Len() / 2)
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}
