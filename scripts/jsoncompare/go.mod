module github.com/fender-sidecar/fender/scripts/jsoncompare

go 1.26.8

require (
	github.com/bytedance/sonic v1.15.5
	github.com/fender-sidecar/fender v0.0.0
	github.com/goccy/go-json v0.10.5
	github.com/segmentio/encoding v0.5.4
)

require (
	github.com/VictoriaMetrics/metrics v1.45.0 // indirect
	github.com/bytedance/gopkg v0.1.3 // indirect
	github.com/bytedance/sonic/loader v0.5.3 // indirect
	github.com/cloudwego/base64x v0.1.6 // indirect
	github.com/eapache/go-resiliency v1.7.0 // indirect
	github.com/klauspost/cpuid/v2 v2.2.9 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/patrickmn/go-cache v2.1.0+incompatible // indirect
	github.com/rs/zerolog v1.35.1 // indirect
	github.com/segmentio/asm v1.1.3 // indirect
	github.com/twitchyliquid64/golang-asm v0.15.1 // indirect
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
	golang.org/x/arch v0.0.0-20210923205945-b76863e36670 // indirect
	golang.org/x/sys v0.38.0 // indirect
)

replace github.com/fender-sidecar/fender => ../..
