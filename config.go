package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/sidecar"
)

// Config is fender's whole configuration, read from FENDER_* variables
// (SPEC section 7). Every variable is parsed here, also those that only later
// parts use, so that a bad value anywhere stops fender at start.
type Config struct {
	Socket      string       `envconfig:"SOCKET" default:"/tmp/fender.sock"`
	SocketMode  fileMode     `envconfig:"SOCKET_MODE" default:"0660"`
	AllowedUIDs uidList      `envconfig:"ALLOWED_UIDS"`
	AdminUIDs   uidList      `envconfig:"ADMIN_UIDS"`
	Upstreams   upstreamList `envconfig:"UPSTREAMS" default:"ollama=http://127.0.0.1:11434"`
	Policies    string       `envconfig:"POLICIES"`

	Timeout            time.Duration `envconfig:"TIMEOUT" default:"10s"`
	Deadline           time.Duration `envconfig:"DEADLINE" default:"30s"`
	Retries            int           `envconfig:"RETRIES" default:"3"`
	BackoffInitial     time.Duration `envconfig:"BACKOFF_INITIAL" default:"50ms"`
	BackoffMax         time.Duration `envconfig:"BACKOFF_MAX" default:"500ms"`
	BackoffMultiplier  float64       `envconfig:"BACKOFF_MULTIPLIER" default:"2"`
	Jitter             float64       `envconfig:"JITTER" default:"0.25"`
	RetryBudget        float64       `envconfig:"RETRY_BUDGET" default:"0.2"`
	RetryBudgetMin     int           `envconfig:"RETRY_BUDGET_MIN" default:"3"`
	BreakerFailures    int           `envconfig:"BREAKER_FAILURES" default:"5"`
	BreakerSuccesses   int           `envconfig:"BREAKER_SUCCESSES" default:"2"`
	BreakerCooldown    time.Duration `envconfig:"BREAKER_COOLDOWN" default:"30s"`
	BreakerHalfOpenMax int           `envconfig:"BREAKER_HALF_OPEN_MAX" default:"1"`

	CacheTTL        time.Duration `envconfig:"CACHE_TTL" default:"5m"`
	CacheStale      time.Duration `envconfig:"CACHE_STALE" default:"1h"`
	CacheMaxEntries int           `envconfig:"CACHE_MAX_ENTRIES" default:"10000"`
	CacheMaxBytes   int64         `envconfig:"CACHE_MAX_BYTES" default:"67108864"`
	CacheSnapshot   string        `envconfig:"CACHE_SNAPSHOT"`

	MaxInflight      int   `envconfig:"MAX_INFLIGHT" default:"1024"`
	MaxConnInflight  int   `envconfig:"MAX_CONN_INFLIGHT" default:"256"`
	MaxRequestBytes  int   `envconfig:"MAX_REQUEST_BYTES" default:"1048576"`
	MaxResponseBytes int64 `envconfig:"MAX_RESPONSE_BYTES" default:"8388608"`

	DrainTimeout time.Duration `envconfig:"DRAIN_TIMEOUT" default:"25s"`

	MetricsAddr         string        `envconfig:"METRICS_ADDR" default:"127.0.0.1:9464"`
	MetricsPushURL      string        `envconfig:"METRICS_PUSH_URL"`
	MetricsPushInterval time.Duration `envconfig:"METRICS_PUSH_INTERVAL" default:"10s"`

	LogLevel    string `envconfig:"LOG_LEVEL" default:"info"`
	LogFormat   string `envconfig:"LOG_FORMAT" default:"json"`
	LogRequests bool   `envconfig:"LOG_REQUESTS" default:"false"`

	// Derived by Load.
	Base   policy.Policy            `ignored:"true"`
	PerUps map[string]policy.Policy `ignored:"true"`
}

// ConfigError is a bad configuration value; its message names the variable.
type ConfigError struct {
	Var string
	Msg string
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Msg }

// LoadConfig reads and validates the environment.
func LoadConfig() (*Config, error) {
	var c Config
	if err := envconfig.Process("fender", &c); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			msg := pe.Err.Error()
			var ne *strconv.NumError
			if errors.As(pe.Err, &ne) {
				msg = fmt.Sprintf("want %s, %s", kindOf(pe.TypeName), ne.Err)
			}
			if pe.KeyName == "FENDER_UPSTREAMS" || pe.KeyName == "FENDER_METRICS_PUSH_URL" {
				// The value may hold credentials: name the fault, not the value.
				return nil, &ConfigError{Var: pe.KeyName, Msg: msg}
			}
			return nil, &ConfigError{Var: pe.KeyName, Msg: fmt.Sprintf("invalid value %q: %s", pe.Value, msg)}
		}
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func kindOf(typeName string) string {
	switch {
	case strings.HasPrefix(typeName, "int"), strings.HasPrefix(typeName, "uint"):
		return "an integer"
	case strings.HasPrefix(typeName, "float"):
		return "a number"
	case typeName == "bool":
		return "true or false"
	case typeName == "time.Duration":
		return "a duration like 250ms or 30s"
	}
	return typeName
}

func (c *Config) validate() error {
	bad := func(v, format string, args ...any) error {
		return &ConfigError{Var: "FENDER_" + v, Msg: fmt.Sprintf(format, args...)}
	}
	c.Base = policy.Policy{
		Timeout: c.Timeout, Deadline: c.Deadline, Retries: c.Retries,
		BackoffInitial: c.BackoffInitial, BackoffMax: c.BackoffMax, BackoffMultiplier: c.BackoffMultiplier,
		Jitter: c.Jitter, RetryBudget: c.RetryBudget, RetryBudgetMin: c.RetryBudgetMin,
		BreakerFailures: c.BreakerFailures, BreakerSuccesses: c.BreakerSuccesses,
		BreakerCooldown: c.BreakerCooldown, BreakerHalfOpenMax: c.BreakerHalfOpenMax,
		CacheTTL: c.CacheTTL, CacheStale: c.CacheStale,
	}
	if err := c.Base.Validate(); err != nil {
		var fe *policy.FieldError
		if errors.As(err, &fe) {
			return bad(strings.ToUpper(fe.Key), "%v", fe.Err)
		}
		return err
	}
	switch {
	case c.Socket == "":
		return bad("SOCKET", "must not be empty")
	case len(c.Socket) > 107:
		return bad("SOCKET", "path is %d bytes; a Unix socket path must be at most 107", len(c.Socket))
	case c.CacheMaxEntries < 1:
		return bad("CACHE_MAX_ENTRIES", "must be >= 1, got %d", c.CacheMaxEntries)
	case c.CacheMaxBytes < 1:
		return bad("CACHE_MAX_BYTES", "must be >= 1, got %d", c.CacheMaxBytes)
	case c.MaxInflight < 1:
		return bad("MAX_INFLIGHT", "must be >= 1, got %d", c.MaxInflight)
	case c.MaxConnInflight < 1:
		return bad("MAX_CONN_INFLIGHT", "must be >= 1, got %d", c.MaxConnInflight)
	case c.MaxRequestBytes < 64:
		return bad("MAX_REQUEST_BYTES", "must be >= 64, got %d", c.MaxRequestBytes)
	case c.MaxResponseBytes < 1:
		return bad("MAX_RESPONSE_BYTES", "must be >= 1, got %d", c.MaxResponseBytes)
	case c.DrainTimeout < 0:
		return bad("DRAIN_TIMEOUT", "must be >= 0, got %s", c.DrainTimeout)
	case c.MetricsPushInterval <= 0:
		return bad("METRICS_PUSH_INTERVAL", "must be > 0, got %s", c.MetricsPushInterval)
	case c.LogFormat != "json" && c.LogFormat != "console":
		return bad("LOG_FORMAT", "must be json or console, got %q", c.LogFormat)
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error", "fatal", "panic", "disabled":
	default:
		return bad("LOG_LEVEL", "must be one of trace, debug, info, warn, error, disabled; got %q", c.LogLevel)
	}
	if c.MetricsAddr != "" {
		host, port, ok := strings.Cut(c.MetricsAddr, ":")
		_ = host
		if n, err := strconv.Atoi(port); !ok || err != nil || n < 0 || n > 65535 {
			return bad("METRICS_ADDR", "want host:port, got %q", c.MetricsAddr)
		}
	}
	if c.MetricsPushURL != "" {
		if _, err := sidecar.ParseUpstreamURL(c.MetricsPushURL); err != nil {
			return bad("METRICS_PUSH_URL", "%v", err)
		}
	}
	if len(c.AdminUIDs) == 0 {
		c.AdminUIDs = uidList{uint32(os.Getuid())}
	}
	return c.parsePolicies()
}

// parsePolicies applies FENDER_POLICIES to the base policy per upstream.
func (c *Config) parsePolicies() error {
	bad := func(format string, args ...any) error {
		return &ConfigError{Var: "FENDER_POLICIES", Msg: fmt.Sprintf(format, args...)}
	}
	c.PerUps = map[string]policy.Policy{}
	known := map[string]bool{}
	for _, u := range c.Upstreams {
		known[u.Name] = true
		c.PerUps[u.Name] = c.Base
	}
	if strings.TrimSpace(c.Policies) == "" {
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(c.Policies), &raw); err != nil || raw == nil {
		return bad("want a JSON object of upstream name to policy: %v", errOr(err, "null"))
	}
	names := make([]string, 0, len(raw))
	for name := range raw {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !known[name] {
			return bad("%q is not an upstream in FENDER_UPSTREAMS", name)
		}
		ov, err := policy.ParseOverrides(raw[name])
		if err != nil {
			return bad("%s: %v", name, err)
		}
		p, err := ov.Apply(c.Base)
		if err != nil {
			return bad("%s: %v", name, err)
		}
		for _, f := range p.Fallback {
			up, _, _ := strings.Cut(f, ":")
			if !known[up] {
				return bad("%s: fallback: %q is not an upstream in FENDER_UPSTREAMS", name, up)
			}
		}
		c.PerUps[name] = p
	}
	return nil
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// UpstreamConfigs lists the upstreams with their effective policies.
func (c *Config) UpstreamConfigs() []sidecar.UpstreamConfig {
	out := make([]sidecar.UpstreamConfig, 0, len(c.Upstreams))
	for _, u := range c.Upstreams {
		out = append(out, sidecar.UpstreamConfig{Name: u.Name, URL: u.URL, Policy: c.PerUps[u.Name]})
	}
	return out
}

// fileMode is an octal file mode such as 0660.
type fileMode os.FileMode

// Decode implements envconfig.Decoder.
func (m *fileMode) Decode(v string) error {
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 0o777 {
		return fmt.Errorf("want an octal file mode like 0660")
	}
	*m = fileMode(n)
	return nil
}

// uidList is a comma-separated list of numeric uids.
type uidList []uint32

// Decode implements envconfig.Decoder.
func (l *uidList) Decode(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil || n == math.MaxUint32 {
			return fmt.Errorf("want comma-separated numeric uids, got %q", f)
		}
		*l = append(*l, uint32(n))
	}
	return nil
}

// upstreamDef is one name=url pair of FENDER_UPSTREAMS.
type upstreamDef struct{ Name, URL string }

// upstreamList is FENDER_UPSTREAMS: name=url,name2=url2.
type upstreamList []upstreamDef

// Decode implements envconfig.Decoder.
func (l *upstreamList) Decode(v string) error {
	*l = nil
	seen := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		name, u, ok := strings.Cut(f, "=")
		name, u = strings.TrimSpace(name), strings.TrimSpace(u)
		if !ok {
			return fmt.Errorf("want name=url pairs separated by commas, got %q", redactPair(f))
		}
		if !sidecar.ValidName(name) {
			return fmt.Errorf("upstream name %q: use letters, digits, '-', '_' and '.'", name)
		}
		if seen[name] {
			return fmt.Errorf("upstream %q is named twice", name)
		}
		if _, err := sidecar.ParseUpstreamURL(u); err != nil {
			return fmt.Errorf("upstream %s: %v", name, err)
		}
		seen[name] = true
		*l = append(*l, upstreamDef{name, u})
	}
	return nil
}

// redactPair hides what may be a credential in a malformed name=url pair.
func redactPair(s string) string {
	if strings.Contains(s, "@") {
		return "(redacted)"
	}
	return s
}
