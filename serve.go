package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/sidecar"
	"github.com/fender-sidecar/fender/socket"
	"github.com/fender-sidecar/fender/store"
)

// closeLimit bounds writing the last answers and closing connections after
// the drain.
const closeLimit = 5 * time.Second

// serve runs the sidecar until SIGTERM or SIGINT, then drains. Exit status:
// 0 after a clean drain, 1 when it cannot start, 2 on bad configuration.
func serve(stderr io.Writer) int {
	cfg, err := LoadConfig()
	if err != nil {
		fmt.Fprintf(stderr, "fender: configuration: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	cache := store.New(store.Options{MaxEntries: cfg.CacheMaxEntries, MaxBytes: cfg.CacheMaxBytes})
	defer cache.Close()
	if cfg.CacheSnapshot != "" {
		loadSnapshot(log, cache, cfg.CacheSnapshot)
	}
	var srv *socket.Server
	svc, err := sidecar.New(sidecar.Options{
		Upstreams:        cfg.UpstreamConfigs(),
		BasePolicy:       cfg.Base,
		MaxInflight:      cfg.MaxInflight,
		MaxResponseBytes: cfg.MaxResponseBytes,
		AdminUIDs:        cfg.AdminUIDs,
		LogRequests:      cfg.LogRequests,
		Logger:           log,
		Cache:            cache,
		Connections:      func() int64 { return srv.Connections() },
	})
	if err != nil {
		fmt.Fprintf(stderr, "fender: configuration: %v\n", err)
		return 2
	}
	defer svc.Close()
	ln, err := socket.Listen(cfg.Socket, os.FileMode(cfg.SocketMode))
	if err != nil {
		log.Error().Err(err).Str("socket", cfg.Socket).Msg("cannot start")
		return 1
	}
	srv = socket.NewServer(ln, svc, socket.Options{
		MaxRequestBytes: cfg.MaxRequestBytes,
		MaxConnInflight: cfg.MaxConnInflight,
		AllowedUIDs:     cfg.AllowedUIDs,
		Logger:          log,
	})
	logStart(log, cfg)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()

	select {
	case sig := <-sigs:
		log.Info().Str("signal", sig.String()).Dur("drain_timeout", cfg.DrainTimeout).
			Int64("inflight", svc.Inflight()).Msg("draining")
	case err := <-served:
		log.Error().Err(err).Msg("socket server stopped")
		return 1
	}
	start := time.Now()
	svc.Drain()
	srv.StopReading()
	timer := time.NewTimer(cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-srv.Idle():
	case <-timer.C:
		log.Warn().Int64("inflight", svc.Inflight()).Msg("drain timeout: ending the requests still in flight")
		svc.Abort(sidecar.ErrShuttingDown)
		srv.Abort(sidecar.ErrShuttingDown)
	case sig := <-sigs:
		log.Warn().Str("signal", sig.String()).Int64("inflight", svc.Inflight()).Msg("second signal: ending the requests still in flight")
		svc.Abort(sidecar.ErrShuttingDown)
		srv.Abort(sidecar.ErrShuttingDown)
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeLimit)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		log.Warn().Err(err).Msg("close socket server")
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn().Err(err).Msg("remove socket file")
	}
	if cfg.CacheSnapshot != "" {
		if n, err := cache.Save(cfg.CacheSnapshot); err != nil {
			log.Warn().Err(err).Str("path", cfg.CacheSnapshot).Msg("cache snapshot not written")
		} else {
			log.Info().Int("entries", n).Str("path", cfg.CacheSnapshot).Msg("cache snapshot written")
		}
	}
	log.Info().Dur("drained_in", time.Since(start)).Msg("exit")
	return 0
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
	log.Info().Str("version", version).Int("pid", os.Getpid()).
		Str("socket", cfg.Socket).Str("socket_mode", fmt.Sprintf("%#o", cfg.SocketMode)).
		Dict("upstreams", ups).Dict("policies", pols).
		Int("max_inflight", cfg.MaxInflight).Int("max_conn_inflight", cfg.MaxConnInflight).
		Int("max_request_bytes", cfg.MaxRequestBytes).Int64("max_response_bytes", cfg.MaxResponseBytes).
		Int("cache_max_entries", cfg.CacheMaxEntries).Int64("cache_max_bytes", cfg.CacheMaxBytes).
		Dur("drain_timeout", cfg.DrainTimeout).Str("metrics_addr", cfg.MetricsAddr).
		Bool("log_requests", cfg.LogRequests).Msg("fender started")
}
