package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/eapache/go-resiliency/retrier"

	"github.com/fender-sidecar/fender/h1"
	"github.com/fender-sidecar/fender/policy"
)

// UpstreamConfig names one upstream service and its policy.
type UpstreamConfig struct {
	Name   string
	URL    string
	Policy policy.Policy
}

// ParseUpstreamURL checks an upstream base URL: http or https, a host, no
// query or fragment. A path is kept as a prefix of every request path.
func ParseUpstreamURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, password included
		}
		return nil, fmt.Errorf("invalid URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("URL %q: scheme must be http or https", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("URL %q: no host", u.Redacted())
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("URL %q: no query or fragment allowed", u.Redacted())
	}
	return u, nil
}

// ValidName reports whether s may name an upstream: letters, digits, '-', '_', '.'.
func ValidName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// upstream is one configured upstream at run time.
type upstream struct {
	name     string
	base     string       // scheme://host[:port][/prefix], no trailing slash
	redacted string       // base with any password masked, for health and logs
	h1       *h1.Client   // plaintext upstreams: fender's own HTTP/1.1 client
	client   *http.Client // https upstreams: net/http, HTTP/2 when offered
	budget   policy.Budget
	pol      atomic.Pointer[livePolicy]
}

// livePolicy is a validated policy with the retrier built from it; swapped whole.
type livePolicy struct {
	policy.Policy
	retrier *retrier.Retrier
}

// errRetry tells go-resiliency's retrier to back off and try again; any other
// non-nil error stops it (see newLivePolicy).
var (
	errRetry = errors.New("retry")
	errStop  = errors.New("stop")
)

// maxSchedule bounds the backoff schedule handed to the retrier; past it the
// last (capped) backoff repeats.
const maxSchedule = 64

func newLivePolicy(p policy.Policy) *livePolicy {
	// The retrier sleeps the shortest jittered backoff; the call adds the
	// random rest of the jitter (and any Retry-After) itself, so the wait
	// before retry k is uniform in Backoff(k) ± Jitter and known before it
	// starts, which lets a retry that would pass the deadline be refused at
	// once. The retrier loops until the call's work says stop.
	var sched []time.Duration
	for k := 0; k < maxSchedule; k++ {
		sched = append(sched, p.MinBackoff(k))
		if p.Backoff(k) >= p.BackoffMax {
			break
		}
	}
	r := retrier.New(sched, retrier.WhitelistClassifier{errRetry}).WithInfiniteRetry().WithSurfaceWorkErrors()
	return &livePolicy{Policy: p, retrier: r}
}

func newUpstream(c UpstreamConfig, maxIdlePerHost int) (*upstream, error) {
	u, err := ParseUpstreamURL(c.URL)
	if err != nil {
		return nil, err
	}
	if err := c.Policy.Validate(); err != nil {
		return nil, err
	}
	up := &upstream{
		name:     c.Name,
		base:     strings.TrimRight(u.String(), "/"),
		redacted: strings.TrimRight(u.Redacted(), "/"),
	}
	if u.Scheme == "http" {
		// The calling goroutine writes and reads: no per-connection
		// goroutines to hand requests to (see package h1).
		if up.h1, err = h1.New(u, h1.Options{MaxIdle: maxIdlePerHost, IdleTimeout: 90 * time.Second, MaxHeaderBytes: 1 << 20}); err != nil {
			return nil, err
		}
	} else {
		dialer := &net.Dialer{KeepAlive: 30 * time.Second}
		up.client = &http.Client{
			Transport: &http.Transport{
				Proxy:                  nil, // upstreams are only those configured
				DialContext:            dialer.DialContext,
				ForceAttemptHTTP2:      true,
				MaxIdleConns:           maxIdlePerHost,
				MaxIdleConnsPerHost:    maxIdlePerHost,
				IdleConnTimeout:        90 * time.Second,
				TLSHandshakeTimeout:    10 * time.Second,
				ExpectContinueTimeout:  time.Second,
				MaxResponseHeaderBytes: 1 << 20,
			},
			// Redirects are answered, never followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	up.pol.Store(newLivePolicy(c.Policy))
	return up, nil
}

// close drops the upstream's idle connections.
func (u *upstream) close() {
	if u.h1 != nil {
		u.h1.Close()
	} else {
		u.client.CloseIdleConnections()
	}
}

// hopHeaders are never forwarded, in either direction (RFC 9110 section 7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Proxy-Connection": true,
}

// dropHeader reports whether a request header is not forwarded: Host,
// Content-Length, hop-by-hop headers and those the Connection header names.
func dropHeader(canon string, connNamed map[string]bool) bool {
	return canon == "Host" || canon == "Content-Length" || hopHeaders[canon] || connNamed[canon]
}
