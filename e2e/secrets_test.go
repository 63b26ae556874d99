package e2e

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Planted secrets: each is distinct, and none contains another.
const (
	secretURLPass      = "PLANTED-URLPW-q7"
	secretDownPass     = "PLANTED-DOWNPW-k2"
	secretConfigPass   = "PLANTED-CFGPW-m5"
	secretPushPass     = "PLANTED-PUSHPW-z9"
	secretAuth         = "PLANTED-AUTH-b4"
	secretCookie       = "PLANTED-COOKIE-c8"
	secretXAPIKey      = "PLANTED-XAPIKEY-d1"
	secretXAuthToken   = "PLANTED-XAUTHTOKEN-e6"
	secretProxyAuth    = "PLANTED-PROXYAUTH-f3"
	secretCustomToken  = "PLANTED-CUSTOMTOKEN-g2"
	secretAPIKeyHeader = "PLANTED-APIKEYHDR-h5"
	secretQueryKey     = "PLANTED-QKEY-j1"
	secretQueryToken   = "PLANTED-QTOKEN-p4"
)

// secretHeaders are credential headers a client sends with its calls.
func secretHeaders(withAuth bool) map[string]any {
	h := map[string]any{
		"Cookie":              "session=" + secretCookie,
		"X-Api-Key":           secretXAPIKey,
		"X-Auth-Token":        secretXAuthToken,
		"Proxy-Authorization": "Basic " + secretProxyAuth,
		"X-Custom-Token":      secretCustomToken,
		"Api-Key":             secretAPIKeyHeader,
	}
	if withAuth {
		h["Authorization"] = "Bearer " + secretAuth
	}
	return h
}

// secretQuery is a query string with credentials in it.
const secretQuery = "?api_key=" + secretQueryKey + "&token=" + secretQueryToken

// authUpstream is a fake upstream that records the credentials it receives.
// Routes: /ok 200 {"ok":true}; /fail 503; /hang blocks until the request
// ends. Its answers never echo the request.
type authUpstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []seenAuth
}

// seenAuth is what one request to an authUpstream carried.
type seenAuth struct {
	Path          string
	Query         string
	Authorization string
	User, Pass    string
}

func newAuthUpstream(t testing.TB) *authUpstream {
	t.Helper()
	u := &authUpstream{}
	quit := make(chan struct{})
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		s := seenAuth{Path: r.URL.Path, Query: r.URL.RawQuery, Authorization: r.Header.Get("Authorization")}
		s.User, s.Pass, _ = r.BasicAuth()
		u.mu.Lock()
		u.seen = append(u.seen, s)
		u.mu.Unlock()
		switch r.URL.Path {
		case "/fail":
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "down"})
		case "/hang":
			select {
			case <-r.Context().Done():
			case <-quit:
			}
		default:
			writeJSON(w, http.StatusOK, map[string]any{"ok": true})
		}
	}))
	t.Cleanup(func() {
		close(quit)
		u.Server.CloseClientConnections()
		u.Server.Close()
	})
	return u
}

// Seen lists the requests that reached path.
func (u *authUpstream) Seen(path string) []seenAuth {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []seenAuth
	for _, s := range u.seen {
		if s.Path == path {
			out = append(out, s)
		}
	}
	return out
}

// withUser puts user:pass into an http://host:port URL.
func withUser(rawURL, user, pass string) string {
	return strings.Replace(rawURL, "http://", "http://"+user+":"+pass+"@", 1)
}

// TestSecretsNeverLogged plants credentials in upstream URLs (at start and
// by configure), the push URL, request headers and query parameters, makes
// calls that succeed, fail with 503, are refused, time out, hit the cache
// or are malformed, at log level debug with request logging on, and checks
// that no credential appears in stderr, in the health and stats answers or
// in /metrics, while the upstream still receives the Authorization header
// and the basic auth of its URL (SPEC 9).
func TestSecretsNeverLogged(t *testing.T) {
	t.Parallel()
	u := newAuthUpstream(t)
	f, m := startMetricsFender(t, map[string]string{
		"FENDER_UPSTREAMS": upstreams(
			"llm", withUser(u.URL, "user", secretURLPass),
			"down", withUser(refusedURL(t), "user2", secretDownPass)),
		"FENDER_RETRIES":               "1",
		"FENDER_TIMEOUT":               "300ms",
		"FENDER_BACKOFF_INITIAL":       "1ms",
		"FENDER_BACKOFF_MAX":           "2ms",
		"FENDER_BREAKER_FAILURES":      "1000",
		"FENDER_RETRY_BUDGET_MIN":      "100",
		"FENDER_DEADLINE":              "20s",
		"FENDER_LOG_LEVEL":             "debug",
		"FENDER_LOG_REQUESTS":          "true",
		"FENDER_METRICS_PUSH_URL":      withUser(refusedURL(t), "u", secretPushPass) + "/api/v1/import/prometheus",
		"FENDER_METRICS_PUSH_INTERVAL": "200ms",
	})
	c := f.Dial(t)
	call := func(upstream, path string, withAuth bool, kv ...any) Resp {
		req := callReq(upstream, path+secretQuery, "headers", secretHeaders(withAuth), "model", "m1")
		for i := 0; i+1 < len(kv); i += 2 {
			req[kv[i].(string)] = kv[i+1]
		}
		return c.Call(t, req)
	}

	wantOK(t, call("llm", "/ok", true))
	wantOK(t, call("llm", "/ok/basic", false))
	wantError(t, call("llm", "/fail", true), "upstream_status", true)
	wantError(t, call("down", "/ok", true), "unavailable", true)
	wantError(t, call("llm", "/hang", true, "retries", 0), "timeout", true)
	wantOK(t, call("llm", "/ok/cached", true, "cache", "use"))
	wantHit(t, call("llm", "/ok/cached", true, "cache", "use"))
	bad, _ := json.Marshal(Req{"id": "bad", "upstream": "llm", "path": "/ok" + secretQuery,
		"headers": secretHeaders(true), "retries": -1})
	c.WriteRaw(t, string(bad)+"\n")
	if r := c.Next(t); r.Code() != "bad_request" {
		t.Errorf("a request with retries -1: got %s, want bad_request", r.Raw)
	}
	configured := withUser(u.URL, "u3", secretConfigPass)
	wantOK(t, c.Call(t, Req{"op": "configure", "upstream": "extra", "url": configured}))
	wantOK(t, call("extra", "/ok/extra", false))

	// The upstream gets the credentials: forwarding is fine, logging is not.
	if s := u.Seen("/ok"); len(s) != 1 || s[0].Authorization != "Bearer "+secretAuth {
		t.Errorf("upstream /ok: got %+v, want one request with Authorization: Bearer %s", s, secretAuth)
	}
	if s := u.Seen("/ok/basic"); len(s) != 1 || s[0].User != "user" || s[0].Pass != secretURLPass {
		t.Errorf("upstream /ok/basic: got %+v, want one request with the URL's basic auth user:%s", s, secretURLPass)
	}
	if s := u.Seen("/ok/extra"); len(s) != 1 || s[0].User != "u3" || s[0].Pass != secretConfigPass {
		t.Errorf("upstream /ok/extra: got %+v, want one request with the configured URL's basic auth u3:%s", s, secretConfigPass)
	}

	health := c.Call(t, Req{"op": "health"})
	wantOK(t, health)
	if got := health.Upstreams["llm"].URL; !strings.Contains(got, strings.TrimPrefix(u.URL, "http://")) {
		t.Errorf("health: upstreams.llm.url %q, want the upstream's address (password masked)", got)
	}
	stats := c.Call(t, Req{"op": "stats"})
	wantOK(t, stats)
	metrics := m.scrape(t).Text

	waitLog(t, f, "the failing push at warn or error", pushFailure)
	f.Signal(t, syscall.SIGTERM)
	if code := f.WaitExit(t, stopTimeout); code != 0 {
		t.Errorf("exit status: got %d, want 0", code)
	}

	secrets := map[string]string{
		"password in the upstream URL":            secretURLPass,
		"basic auth of the upstream URL":          base64.StdEncoding.EncodeToString([]byte("user:" + secretURLPass)),
		"password in a refused upstream's URL":    secretDownPass,
		"password in a configured upstream's URL": secretConfigPass,
		"basic auth of the configured URL":        base64.StdEncoding.EncodeToString([]byte("u3:" + secretConfigPass)),
		"password in the push URL":                secretPushPass,
		"Authorization header":                    secretAuth,
		"Cookie header":                           secretCookie,
		"X-Api-Key header":                        secretXAPIKey,
		"X-Auth-Token header":                     secretXAuthToken,
		"Proxy-Authorization header":              secretProxyAuth,
		"X-Custom-Token header":                   secretCustomToken,
		"Api-Key header":                          secretAPIKeyHeader,
		"api_key query parameter":                 secretQueryKey,
		"token query parameter":                   secretQueryToken,
	}
	stderr := f.Stderr()
	if len(logLines(stderr)) < 10 {
		t.Errorf("stderr has %d lines at level debug with request logging, want the start event, request lines and more:\n%s",
			len(logLines(stderr)), stderr)
	}
	for _, what := range slices.Sorted(maps.Keys(secrets)) {
		secret := secrets[what]
		var leaks []string
		for _, l := range logLines(stderr) {
			if strings.Contains(l.Raw, secret) {
				leaks = append(leaks, l.Raw)
			}
		}
		if len(leaks) > 0 {
			t.Errorf("%s (%s) in %d stderr lines, e.g.:\n%s", what, secret, len(leaks), strings.Join(leaks[:min(3, len(leaks))], "\n"))
		}
		for name, text := range map[string]string{"health answer": health.Raw, "stats answer": stats.Raw, "/metrics": metrics} {
			if strings.Contains(text, secret) {
				t.Errorf("%s (%s) in the %s: %s", what, secret, name, tail(text, 2048))
			}
		}
	}
}
