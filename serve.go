package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/sidecar"
	"github.com/fender-sidecar/fender/socket"
	"github.com/fender-sidecar/fender/stats"
	"github.com/fender-sidecar/fender/store"
)

// closeLimit bounds writing the last answers and closing connections after
// the drain.
const closeLimit = 5 * time.Second

// app is fender's running parts, wired together.
type app struct {
	cfg     *Config
	log     zerolog.Logger
	cache   *store.Store
	metrics *stats.Metrics
	svc     *sidecar.Service
	srv     *socket.Server
	http    *stats.Server // nil when FENDER_METRICS_ADDR is empty
	push    *stats.Pusher // nil when FENDER_METRICS_PUSH_URL is empty
}

// serve runs the sidecar until SIGTERM or SIGINT, then drains. Exit status:
// 0 after a clean drain, 1 when it cannot start, 2 on bad configuration.
func serve(stderr io.Writer) int {
	cfg, err := LoadConfig()
	if err != nil {
		fmt.Fprintf(stderr, "fender: configuration: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	a, err := start(cfg, log)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			fmt.Fprintf(stderr, "fender: configuration: %v\n", err)
			return 2
		}
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	logStart(log, cfg)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- a.srv.Serve() }()
	select {
	case sig := <-sigs:
		log.Info().Str("signal", sig.String()).Dur("drain_timeout", cfg.DrainTimeout).
			Int64("inflight", a.svc.Inflight()).Msg("draining")
	case err := <-served:
		log.Error().Err(err).Msg("socket server stopped")
		a.close()
		return 1
	}
	a.drain(sigs)
	return 0
}

// start builds and starts every part; on error, what was started is closed.
func start(cfg *Config, log zerolog.Logger) (_ *app, err error) {
	a := &app{cfg: cfg, log: log}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	var m *stats.Metrics
	a.cache = store.New(store.Options{
		MaxEntries: cfg.CacheMaxEntries, MaxBytes: cfg.CacheMaxBytes,
		OnEvict: func() { m.Evicted() },
	})
	names := make([]string, 0, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	m = stats.NewMetrics(names, stats.Gauges{
		CacheEntries: func() float64 { return float64(a.cache.Len()) },
		CacheBytes:   func() float64 { return float64(a.cache.Bytes()) },
		Inflight:     func() float64 { return float64(a.svc.Inflight()) },
		Connections:  func() float64 { return float64(a.srv.Connections()) },
	})
	a.metrics = m
	if cfg.CacheSnapshot != "" {
		loadSnapshot(log, a.cache, cfg.CacheSnapshot)
	}
	a.svc, err = sidecar.New(sidecar.Options{
		Upstreams:        cfg.UpstreamConfigs(),
		BasePolicy:       cfg.Base,
		MaxInflight:      cfg.MaxInflight,
		MaxResponseBytes: cfg.MaxResponseBytes,
		AdminUIDs:        cfg.AdminUIDs,
		LogRequests:      cfg.LogRequests,
		Logger:           log,
		Cache:            a.cache,
		Hooks:            m,
		Connections:      func() int64 { return a.srv.Connections() },
	})
	if err != nil {
		return nil, &ConfigError{Var: "FENDER_UPSTREAMS", Msg: err.Error()}
	}
	ln, err := socket.Listen(cfg.Socket, os.FileMode(cfg.SocketMode))
	if err != nil {
		return nil, err
	}
	a.srv = socket.NewServer(ln, a.svc, socket.Options{
		MaxRequestBytes: cfg.MaxRequestBytes,
		MaxConnInflight: cfg.MaxConnInflight,
		AllowedUIDs:     cfg.AllowedUIDs,
		Logger:          log,
		Hooks:           m,
	})
	if cfg.MetricsAddr != "" {
		ready := func() bool { return !a.svc.Draining() }
		if a.http, err = stats.Listen(cfg.MetricsAddr, m.WritePrometheus, ready); err != nil {
			ln.Close()
			return nil, err
		}
	}
	if cfg.MetricsPushURL != "" {
		plog := log.With().Str("component", "push").Logger()
		logErr := func(format string, args ...any) { plog.Warn().Msgf(format, args...) }
		if a.push, err = stats.StartPush(cfg.MetricsPushURL, cfg.MetricsPushInterval, m.WritePrometheus, logErr); err != nil {
			ln.Close()
			return nil, &ConfigError{Var: "FENDER_METRICS_PUSH_URL", Msg: err.Error()}
		}
	}
	return a, nil
}

// drain stops taking work, finishes what is in flight within the drain
// timeout (or until a second signal), answers the rest shutting_down, then
// closes everything and writes the cache snapshot.
func (a *app) drain(sigs <-chan os.Signal) {
	start := time.Now()
	a.svc.Drain() // also turns /readyz to 503
	a.srv.StopReading()
	timer := time.NewTimer(a.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-a.srv.Idle():
	case <-timer.C:
		a.log.Warn().Int64("inflight", a.svc.Inflight()).Msg("drain timeout: ending the requests still in flight")
		a.svc.Abort(sidecar.ErrShuttingDown)
		a.srv.Abort(sidecar.ErrShuttingDown)
	case sig := <-sigs:
		a.log.Warn().Str("signal", sig.String()).Int64("inflight", a.svc.Inflight()).Msg("second signal: ending the requests still in flight")
		a.svc.Abort(sidecar.ErrShuttingDown)
		a.srv.Abort(sidecar.ErrShuttingDown)
	}
	a.close()
	a.log.Info().Dur("drained_in", time.Since(start)).Msg("exit")
}

// close closes every part that was started, within closeLimit.
func (a *app) close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeLimit)
	defer cancel()
	if a.srv != nil {
		if err := a.srv.Close(ctx); err != nil {
			a.log.Warn().Err(err).Msg("close socket server")
		}
		if err := os.Remove(a.cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			a.log.Warn().Err(err).Msg("remove socket file")
		}
	}
	if a.push != nil {
		a.push.Close()
	}
	if a.http != nil {
		if err := a.http.Close(ctx); err != nil {
			a.log.Warn().Err(err).Msg("close metrics server")
		}
	}
	if a.svc != nil {
		a.svc.Close()
	}
	if a.cache != nil {
		if a.srv != nil && a.cfg.CacheSnapshot != "" {
			if n, err := a.cache.Save(a.cfg.CacheSnapshot); err != nil {
				a.log.Warn().Err(err).Str("path", a.cfg.CacheSnapshot).Msg("cache snapshot not written")
			} else {
				a.log.Info().Int("entries", n).Str("path", a.cfg.CacheSnapshot).Msg("cache snapshot written")
			}
		}
		a.cache.Close()
	}
}

// loadSnapshot warms the cache from a snapshot; any failure is logged and
// ignored, never fatal.
func loadSnapshot(log zerolog.Logger, cache *store.Store, path string) {
	n, err := cache.Load(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		log.Info().Str("path", path).Msg("no cache snapshot to load")
	case err != nil:
		log.Warn().Err(err).Str("path", path).Msg("cache snapshot ignored")
	default:
		log.Info().Int("entries", n).Str("path", path).Msg("cache snapshot loaded")
	}
}

func newLogger(cfg *Config, stderr io.Writer) zerolog.Logger {
	zerolog.TimeFieldFormat = time.RFC3339Nano
	var w io.Writer = stderr
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: stderr, NoColor: true, TimeFormat: time.RFC3339}
	}
	lvl, _ := zerolog.ParseLevel(cfg.LogLevel)
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger()
}

// logStart logs the effective configuration, without secrets.
func logStart(log zerolog.Logger, cfg *Config) {
	ups := zerolog.Dict()
	for _, u := range cfg.UpstreamConfigs() {
		url, _ := sidecar.ParseUpstreamURL(u.URL)
		ups.Str(u.Name, url.Redacted())
	}
	pols := zerolog.Dict()
	for name, p := range cfg.PerUps {
		pols.Interface(name, p)
	}
	push := ""
	if u, err := url.Parse(cfg.MetricsPushURL); err == nil && cfg.MetricsPushURL != "" {
		push = u.Redacted()
	}
	log.Info().Str("version", version).Int("pid", os.Getpid()).
		Str("socket", cfg.Socket).Str("socket_mode", fmt.Sprintf("%#o", cfg.SocketMode)).
		Dict("upstreams", ups).Dict("policies", pols).
		Int("max_inflight", cfg.MaxInflight).Int("max_conn_inflight", cfg.MaxConnInflight).
		Int("max_request_bytes", cfg.MaxRequestBytes).Int64("max_response_bytes", cfg.MaxResponseBytes).
		Int("cache_max_entries", cfg.CacheMaxEntries).Int64("cache_max_bytes", cfg.CacheMaxBytes).
		Str("cache_snapshot", cfg.CacheSnapshot).Dur("drain_timeout", cfg.DrainTimeout).
		Str("metrics_addr", cfg.MetricsAddr).Str("metrics_push_url", push).
		Dur("metrics_push_interval", cfg.MetricsPushInterval).
		Bool("log_requests", cfg.LogRequests).Msg("fender started")
}
