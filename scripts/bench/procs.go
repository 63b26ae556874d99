package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fender-sidecar/fender/scripts/internal/fenderproc"
)

// userHZ is the kernel's clock tick for /proc/PID/stat times (USER_HZ,
// 100 on every Linux architecture Go supports).
const userHZ = 100

// proc is a child process the tool started: fender, haproxy or the floor.
type proc = fenderproc.Proc

// stopWait bounds how long a stopped process may take to exit.
const stopWait = 10 * time.Second

func buildFender(ctx context.Context, dir string) (string, error) {
	return fenderproc.Build(ctx, dir, "bench")
}

func startProc(name string, cmd *exec.Cmd) (*proc, error) { return fenderproc.Start(name, cmd) }

func tail(s string, n int) string { return fenderproc.Tail(s, n) }

// startFender runs bin with only env as its FENDER_ configuration and waits
// until it serves on env["FENDER_SOCKET"].
func startFender(ctx context.Context, bin string, env map[string]string) (*proc, error) {
	p, err := startProc("fender", fenderproc.FenderCmd(bin, env))
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(ctx, env["FENDER_SOCKET"], fenderproc.Dial(env["FENDER_SOCKET"])); err != nil {
		p.Stop(syscall.SIGKILL, stopWait)
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
	if err := p.WaitReady(ctx, sock, fenderproc.Dial(sock)); err != nil {
		p.Stop(syscall.SIGKILL, stopWait)
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
