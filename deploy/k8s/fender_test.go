package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

const (
	// startTimeout bounds how long fender may take to answer a ping.
	startTimeout = 10 * time.Second
	// stopTimeout bounds the drain after SIGTERM (nothing is in flight).
	stopTimeout = 10 * time.Second
)

// podEnv is the fender container's environment as the manifests set it,
// changed only where the pod differs from a test: paths on the shared
// emptyDir move to dir, metrics listen on a free loopback port, and the
// test's own uid may connect, standing in for fender's uid in the pod (whose
// exec probes connect as fender).
func podEnv(t *testing.T, m *manifests, dir string) map[string]string {
	t.Helper()
	env := m.env(t, m.fender(t))
	mount := filepath.Dir(env["FENDER_SOCKET"])
	for k, v := range env {
		if rest, ok := strings.CutPrefix(v, mount+"/"); ok {
			env[k] = filepath.Join(dir, rest)
		}
	}
	env["FENDER_METRICS_ADDR"] = "127.0.0.1:0"
	if allowed := env["FENDER_ALLOWED_UIDS"]; allowed != "" {
		env["FENDER_ALLOWED_UIDS"] = allowed + "," + strconv.Itoa(os.Getuid())
	}
	return env
}

// environ is the test's environment without FENDER_ variables, plus env.
func environ(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FENDER_") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			out = append(out, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// shortTempDir is a temporary directory short enough for a Unix socket path.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fk8s")
	if err == nil && len(dir) > 60 {
		os.RemoveAll(dir)
		dir, err = os.MkdirTemp("/tmp", "fk8s")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestManifestConfigStartsFender runs the real binary with the pod's
// configuration: it must start, answer `fender ping` on FENDER_SOCKET, list
// the upstreams of FENDER_UPSTREAMS, keep their passwords out of its logs,
// and drain cleanly, writing its cache snapshot.
func TestManifestConfigStartsFender(t *testing.T) {
	bin := fenderBinary(t)
	m := mustLoad(t)
	dir := shortTempDir(t)
	env := podEnv(t, m, dir)

	var stderr bytes.Buffer
	cmd := exec.Command(bin, m.fender(t).Args...)
	cmd.Env = environ(env)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fender: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	// The startup probe's own command, as the kubelet would run it.
	probe := m.fender(t).StartupProbe.Exec.Command
	cli := func(args ...string) ([]byte, error) {
		c := exec.Command(bin, args...)
		c.Env = environ(map[string]string{"FENDER_SOCKET": env["FENDER_SOCKET"]})
		return c.Output()
	}
	deadline := time.Now().Add(startTimeout)
	for {
		if _, err := cli(probe[1:]...); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("fender exited (%v) with the manifests' configuration instead of serving; stderr:\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("fender did not answer %v within %v; stderr:\n%s", probe, startTimeout, stderr.String())
		}
	}

	out, err := cli("health")
	if err != nil {
		t.Fatalf("fender health: %v", err)
	}
	var health struct {
		Status    string                     `json:"status"`
		Upstreams map[string]json.RawMessage `json:"upstreams"`
	}
	if err := json.Unmarshal(out, &health); err != nil {
		t.Fatalf("fender health %q: %v", out, err)
	}
	names, passwords := parseUpstreams(t, env["FENDER_UPSTREAMS"])
	if got := slices.Sorted(maps.Keys(health.Upstreams)); health.Status != "serving" || !slices.Equal(got, names) {
		t.Errorf("fender health: status %q upstreams %v, want serving with %v", health.Status, got, names)
	}
	for _, p := range passwords {
		if bytes.Contains(out, []byte(p)) {
			t.Errorf("fender health shows an upstream password: %s", out)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("fender after SIGTERM: %v, want exit 0; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(stopTimeout):
		t.Fatalf("fender still running %v after SIGTERM", stopTimeout)
	}
	logs := stderr.String()
	if !strings.Contains(logs, `"message":"fender started"`) {
		t.Errorf("no start event in fender's log:\n%s", logs)
	}
	for _, p := range passwords {
		if strings.Contains(logs, p) {
			t.Errorf("fender's log shows an upstream password")
		}
	}
	if _, err := os.Stat(env["FENDER_SOCKET"]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after exit: %v, want it removed", err)
	}
	// FENDER_CACHE_SNAPSHOT cannot be given a bad value, so this is how the
	// test knows fender reads it.
	if snap := env["FENDER_CACHE_SNAPSHOT"]; snap != "" {
		if _, err := os.Stat(snap); err != nil {
			t.Errorf("FENDER_CACHE_SNAPSHOT: no snapshot written on shutdown: %v", err)
		}
	}
}

// parseUpstreams splits FENDER_UPSTREAMS into sorted names and the passwords
// of their URLs.
func parseUpstreams(t *testing.T, v string) (names, passwords []string) {
	t.Helper()
	for pair := range strings.SplitSeq(v, ",") {
		name, raw, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok {
			t.Fatalf("FENDER_UPSTREAMS: %q is not name=url", name)
		}
		names = append(names, name)
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("FENDER_UPSTREAMS %s: %v", name, err)
		}
		if p, ok := u.User.Password(); ok {
			passwords = append(passwords, p)
		}
	}
	slices.Sort(names)
	return names, passwords
}

// TestManifestVariablesAreFenderVariables proves that fender reads each
// FENDER_ variable the manifests set (fender ignores names it does not
// know, so a misspelt one would silently do nothing): with that one variable
// made invalid, fender must refuse to start, exit 2 and name it.
func TestManifestVariablesAreFenderVariables(t *testing.T) {
	bin := fenderBinary(t)
	m := mustLoad(t)
	base := podEnv(t, m, shortTempDir(t))
	vars := fenderVars(t, m)
	for _, name := range vars {
		if name == "FENDER_CACHE_SNAPSHOT" {
			continue // any path is valid; TestManifestConfigStartsFender checks it is written
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := maps.Clone(base)
			env[name] = "not-a-valid-value!"
			if name == "FENDER_SOCKET" {
				env[name] = "/" + strings.Repeat("x", 200) // longer than a socket path can be
			}
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = environ(env)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("fender kept running with %s invalid: it does not read %s", name, name)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), name) {
				t.Errorf("fender with %s invalid: %v, stderr %q; want exit 2 naming %s", name, err, stderr.String(), name)
			}
		})
	}
}

// fenderVars lists the FENDER_ variables any container of the manifests sets.
func fenderVars(t *testing.T, m *manifests) []string {
	t.Helper()
	set := map[string]bool{}
	for _, ctr := range []*corev1.Container{m.fender(t), m.app(t)} {
		for k := range m.env(t, ctr) {
			if strings.HasPrefix(k, "FENDER_") {
				set[k] = true
			}
		}
	}
	if len(set) == 0 {
		t.Fatalf("the manifests set no FENDER_ variable")
	}
	return slices.Sorted(maps.Keys(set))
}

// TestManifestVariablesDocumented checks that each FENDER_ variable of the
// manifests is in README.md's configuration table or docs/PROTOCOL.md
// section 7 (the contract).
func TestManifestVariablesDocumented(t *testing.T) {
	m := mustLoad(t)
	documented := map[string]bool{}
	for _, doc := range []string{"README.md", "docs/PROTOCOL.md"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, doc))
		if err != nil {
			t.Fatalf("read %s: %v", doc, err)
		}
		maps.Copy(documented, documentedVars(string(b)))
	}
	if len(documented) < 20 {
		t.Fatalf("found only %d documented variables; has the table's format changed?", len(documented))
	}
	for _, name := range fenderVars(t, m) {
		if !documented[name] {
			t.Errorf("%s: set in the manifests, not in README.md's configuration table nor docs/PROTOCOL.md section 7", name)
		}
	}
}

var backticked = regexp.MustCompile("`([A-Z_]+)`")

// documentedVars reads the variable tables of a document: rows whose first
// cell names `FENDER_X`, optionally followed by `_SUFFIX` shorthands that
// replace some trailing part of the first name (`FENDER_CACHE_TTL` /
// `_STALE`, `FENDER_RETRY_BUDGET` / `_MIN`).
func documentedVars(doc string) map[string]bool {
	out := map[string]bool{}
	for line := range strings.SplitSeq(doc, "\n") {
		if !strings.HasPrefix(line, "| `FENDER_") {
			continue
		}
		cell, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), "|")
		names := backticked.FindAllStringSubmatch(cell, -1)
		first := names[0][1]
		out[first] = true
		for _, n := range names[1:] {
			for i := range len(first) + 1 {
				if i == len(first) || first[i] == '_' {
					out[first[:i]+n[1]] = true
				}
			}
		}
	}
	return out
}
