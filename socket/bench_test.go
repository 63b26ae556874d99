package socket

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/policy"
	"github.com/fender-sidecar/fender/sidecar"
)

// BenchmarkSocketCall measures one call end to end inside one process: a
// client writes a request line on a real Unix socket, fender frames and
// decodes it, runs it through breaker and retrier to an httptest upstream on
// loopback, encodes the answer and writes it back. Requests are pipelined on
// one connection, 64 in flight, as a busy client would.
func BenchmarkSocketCall(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"model":"phi3","response":"The dragon sleeps under the mountain.","done":true}`)
	}))
	defer up.Close()
	svc, err := sidecar.New(sidecar.Options{
		Upstreams: []sidecar.UpstreamConfig{{Name: "llm", URL: up.URL, Policy: policy.Default()}},
		Logger:    zerolog.Nop(),
	})
	if err != nil {
		b.Fatal(err)
	}
	_, path := MustServe(b, svc, Options{})
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	line := []byte(`{"id":"r1","upstream":"llm","path":"/api/generate","body":{"model":"phi3","prompt":"Where is the dragon?","stream":false}}` + "\n")
	const window = 64
	sent := make(chan struct{}, window)
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		w := bufio.NewWriter(c)
		for i := 0; i < b.N; i++ {
			sent <- struct{}{}
			w.Write(line)
			if len(sent) == window || i == b.N-1 {
				w.Flush()
			} else if len(sent) < 4 {
				w.Flush()
			}
		}
		w.Flush()
	}()
	r := bufio.NewReader(c)
	for i := 0; i < b.N; i++ {
		ans, err := r.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if len(ans) < 20 || string(ans[:19]) != `{"id":"r1","ok":tru` {
			b.Fatalf("answer %s", ans)
		}
		<-sent
	}
}
