module github.com/fender-sidecar/fender

go 1.26.8

require (
	github.com/VictoriaMetrics/metrics v1.45.0
	github.com/eapache/go-resiliency v1.7.0
	github.com/kelseyhightower/envconfig v1.4.0
	github.com/patrickmn/go-cache v2.1.0+incompatible
	github.com/rs/zerolog v1.35.1
	golang.org/x/sys v0.38.0
)

require (
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
)
