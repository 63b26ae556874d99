// Package jsoncompare measures fender's request decoder and answer encoder
// against encoding/json and three faster, well-kept JSON libraries, on
// fender's own request line and answer. It is a module of its own so that
// the libraries never enter fender's go.mod.
//
// Run from this directory:
//
//	go test -run x -bench . -benchmem -count 6 | benchstat -col /lib -
//
// The libraries decode into a struct, as a program built on them would
// (the members kept raw where fender keeps them raw); fender's Decode also
// does what they don't: refuses duplicate keys, keys in the wrong case and
// null values, and validates the whole line first. The encoders write the
// same answer line; the test checks that every library's line means the
// same JSON as fender's.
package jsoncompare

import (
	stdjson "encoding/json"
	"net/http"
	"reflect"
	"testing"

	"github.com/bytedance/sonic"
	gojson "github.com/goccy/go-json"
	segjson "github.com/segmentio/encoding/json"

	"github.com/fender-sidecar/fender/sidecar"
)

var line = []byte(`{"id":"req-0001","upstream":"llm","path":"/api/chat","headers":{"X-Tenant":"blue"},` +
	`"body":{"model":"phi3","messages":[{"role":"system","content":"You are a dungeon master."},` +
	`{"role":"user","content":"Where is the dragon?"}],"stream":false,"options":{"temperature":0.7}},` +
	`"timeout_ms":8000,"retries":2}`)

// request is what a struct-based decoder fills.
type request struct {
	ID        stdjson.RawMessage `json:"id"`
	Op        string             `json:"op"`
	Upstream  string             `json:"upstream"`
	Method    string             `json:"method"`
	Path      string             `json:"path"`
	Headers   map[string]string  `json:"headers"`
	Body      stdjson.RawMessage `json:"body"`
	BodyText  *string            `json:"body_text"`
	Model     string             `json:"model"`
	TimeoutMs *int64             `json:"timeout_ms"`
	Retries   *int               `json:"retries"`
	Cache     string             `json:"cache"`
	CacheTTL  *int64             `json:"cache_ttl_ms"`
	Stream    bool               `json:"stream"`
}

// answer is the answer line as a struct-based encoder writes it.
type answer struct {
	ID      stdjson.RawMessage `json:"id"`
	OK      bool               `json:"ok"`
	Status  int                `json:"status"`
	Headers map[string]string  `json:"headers"`
	Body    stdjson.RawMessage `json:"body"`
	Meta    meta               `json:"meta"`
}

type meta struct {
	Upstream  string  `json:"upstream"`
	Model     string  `json:"model"`
	Attempts  int     `json:"attempts"`
	Cached    bool    `json:"cached"`
	Stale     bool    `json:"stale"`
	Coalesced bool    `json:"coalesced"`
	Fallback  string  `json:"fallback"`
	Breaker   string  `json:"breaker"`
	LatencyMs float64 `json:"latency_ms"`
}

var (
	id     = []byte(`"req-0001"`)
	header = http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Date": {"Thu, 02 Jan 2025 03:04:05 GMT"}}
	body   = []byte(`{"model":"phi3","created_at":"2025-01-02T03:04:05Z","message":{"role":"assistant",` +
		`"content":"The dragon sleeps under the mountain, on a bed of stolen gold."},"done":true,` +
		`"total_duration":812345678,"eval_count":17}`)
	fmeta = sidecar.Meta{Upstream: "llm", Model: "phi3", Attempts: 1, Breaker: "closed", LatencyMs: 812.4}
	ans   = answer{
		ID: id, OK: true, Status: 200,
		Headers: map[string]string{"Content-Type": "application/json; charset=utf-8", "Date": "Thu, 02 Jan 2025 03:04:05 GMT"},
		Body:    body,
		Meta:    meta{Upstream: "llm", Model: "phi3", Attempts: 1, Breaker: "closed", LatencyMs: 812.4},
	}
)

type lib struct {
	name      string
	unmarshal func([]byte, any) error
	marshal   func(any) ([]byte, error)
}

var libs = []lib{
	{"encoding-json", stdjson.Unmarshal, stdjson.Marshal},
	{"goccy-go-json", gojson.Unmarshal, gojson.Marshal},
	{"segmentio-encoding", segjson.Unmarshal, segjson.Marshal},
	{"sonic", sonic.ConfigStd.Unmarshal, sonic.ConfigStd.Marshal},
}

func BenchmarkDecode(b *testing.B) {
	b.Run("lib=fender", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sidecar.Decode(line); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, l := range libs {
		b.Run("lib="+l.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var r request
				if err := l.unmarshal(line, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncode(b *testing.B) {
	b.Run("lib=fender", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		b.ReportAllocs()
		for b.Loop() {
			buf = sidecar.AppendAnswer(buf[:0], id, 200, header, body, fmeta)
		}
	})
	for _, l := range libs {
		b.Run("lib="+l.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.marshal(&ans); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestSameMeaning checks that the libraries read the line as fender does
// and that their answer lines decode to the same value as fender's.
func TestSameMeaning(t *testing.T) {
	want, derr := sidecar.Decode(line)
	if derr != nil {
		t.Fatal(derr)
	}
	var fenderAnswer any
	if err := stdjson.Unmarshal(sidecar.AppendAnswer(nil, id, 200, header, body, fmeta), &fenderAnswer); err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		var r request
		if err := l.unmarshal(line, &r); err != nil {
			t.Fatalf("%s: %v", l.name, err)
		}
		if r.Upstream != want.Upstream || r.Path != want.Path || string(r.ID) != string(want.ID) ||
			r.Headers["X-Tenant"] != "blue" || *r.TimeoutMs != want.TimeoutMs || *r.Retries != want.Retries {
			t.Errorf("%s decoded %+v, fender %+v", l.name, r, want)
		}
		out, err := l.marshal(&ans)
		if err != nil {
			t.Fatalf("%s: %v", l.name, err)
		}
		var got any
		if err := stdjson.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s wrote %s: %v", l.name, out, err)
		}
		if !reflect.DeepEqual(got, fenderAnswer) {
			t.Errorf("%s wrote %s\nwhich means something else than fender's answer", l.name, out)
		}
	}
}
