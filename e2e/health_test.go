package e2e

import (
	"slices"
	"strings"
	"testing"
)

// TestHealth checks the health answer: serving, each upstream with its url
// and the state of its breakers (SPEC 5).
func TestHealth(t *testing.T) {
	t.Parallel()
	u := newUpstream(t)
	other := refusedURL(t)
	f := startFender(t, map[string]string{"FENDER_UPSTREAMS": upstreams("up", u.URL, "other", other)})
	c := f.Dial(t)

	wantOK(t, c.Call(t, callReq("up", "/ok", "model", "m1")))
	r := c.Call(t, Req{"id": 42, "op": "health"})
	wantOK(t, r)
	if got := idKey(r.ID); got != "42" {
		t.Errorf("id: got %s, want 42", got)
	}
	if got := r.StatusText(); got != "serving" {
		t.Errorf("status: got %q, want \"serving\"", got)
	}
	names := make([]string, 0, len(r.Upstreams))
	for name := range r.Upstreams {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"other", "up"}) {
		t.Fatalf("upstreams: got %v, want [other up] (answer %s)", names, r.Raw)
	}
	for name, want := range map[string]string{"up": u.URL, "other": other} {
		if got := strings.TrimSuffix(r.Upstreams[name].URL, "/"); got != want {
			t.Errorf("upstreams.%s.url: got %q, want %q", name, got, want)
		}
	}
	if got := r.Upstreams["up"].Breakers["m1"]; got != "closed" {
		t.Errorf("upstreams.up.breakers.m1: got %q, want \"closed\" (answer %s)", got, r.Raw)
	}
	if r.Upstreams["other"].Breakers == nil {
		t.Errorf("upstreams.other.breakers: missing, want an object (answer %s)", r.Raw)
	}
}
