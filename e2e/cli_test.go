package e2e

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
)

// TestCLIVersion checks that `fender version` prints the stamped version
// (SPEC 10).
func TestCLIVersion(t *testing.T) {
	t.Parallel()
	res := runFender(t, nil, "version")
	if res.Code != 0 {
		t.Errorf("exit status: got %d, want 0 (stderr: %s)", res.Code, res.Stderr)
	}
	if !strings.Contains(res.Stdout, "e2e") {
		t.Errorf("stdout: got %q, want it to contain the version \"e2e\"", res.Stdout)
	}
}

// TestCLIProbes checks `fender ping` and `fender health` against a running
// sidecar: the JSON answer is printed and the exit status is 0 (SPEC 10).
func TestCLIProbes(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	ups := upstreams("up", u.URL)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups})
	for _, op := range []string{"ping", "health"} {
		t.Run(op, func(t *testing.T) {
			res := runFender(t, map[string]string{"FENDER_SOCKET": f.Socket, "FENDER_UPSTREAMS": ups}, op)
			if res.Code != 0 {
				t.Errorf("exit status: got %d, want 0 (stderr: %s)", res.Code, res.Stderr)
			}
			var out struct {
				OK     bool   `json:"ok"`
				Status string `json:"status"`
			}
			if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil {
				t.Fatalf("stdout %q: %v", res.Stdout, err)
			}
			if !out.OK {
				t.Errorf("stdout: got %s, want \"ok\":true", res.Stdout)
			}
			if op == "health" && out.Status != "serving" {
				t.Errorf("health status: got %q, want serving", out.Status)
			}
		})
	}
}

// TestCLIPingNoServer checks that `fender ping` fails when nothing listens
// (SPEC 10).
func TestCLIPingNoServer(t *testing.T) {
	t.Parallel()
	res := runFender(t, map[string]string{"FENDER_SOCKET": socketPath(t)}, "ping")
	if res.Code == 0 {
		t.Errorf("exit status: got 0, want non-zero (stdout: %s)", res.Stdout)
	}
}

// TestCLICall checks `fender call UPSTREAM PATH JSON_BODY` (SPEC 10).
func TestCLICall(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	ups := upstreams("up", u.URL)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": ups})
	res := runFender(t, map[string]string{"FENDER_SOCKET": f.Socket, "FENDER_UPSTREAMS": ups},
		"call", "up", "/ok", `{"a":1}`)
	if res.Code != 0 {
		t.Errorf("exit status: got %d, want 0 (stderr: %s)", res.Code, res.Stderr)
	}
	r := parseResp([]byte(strings.TrimSpace(res.Stdout)))
	if r.DecodeErr != nil {
		t.Fatalf("stdout %q: %v", res.Stdout, r.DecodeErr)
	}
	wantOK(t, r)
	wantStatus(t, r, 200)
	e := decodeEcho(t, r)
	if !jsonEqual(t, e.Body, `{"a":1}`) {
		t.Errorf("upstream got body %q, want {\"a\":1}", e.Body)
	}
	wantHits(t, u, "/ok", 1)
}

// TestCLIServe checks that `fender serve` runs the sidecar like `fender`
// (SPEC 10).
func TestCLIServe(t *testing.T) {
	t.Parallel()
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", refusedURL(t))}, "serve")
	f.Dial(t).Ping(t)
	f.Signal(t, syscall.SIGTERM)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}
}
