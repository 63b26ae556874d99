package socket

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fender-sidecar/fender/sidecar"
)

// handlerFunc adapts a function to Handler.
type handlerFunc func(ctx context.Context, line []byte) string

func (f handlerFunc) Handle(ctx context.Context, _ sidecar.Peer, line []byte, dst []byte, _ sidecar.Emit) []byte {
	return append(append(dst, f(ctx, line)...), '\n')
}

// echo answers every line with the line itself.
var echo = handlerFunc(func(_ context.Context, line []byte) string { return string(line) })

func shortDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "fs")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// MustServe starts a Server on a fresh socket and returns its path.
func MustServe(tb testing.TB, h Handler, opts Options) (*Server, string) {
	tb.Helper()
	path := filepath.Join(shortDir(tb), "f.sock")
	ln, err := Listen(path, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	opts.Logger = zerolog.Nop()
	s := NewServer(ln, h, opts)
	go s.Serve()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Close(ctx)
	})
	return s, path
}

func MustDial(tb testing.TB, path string) (*net.UnixConn, *bufio.Reader) {
	tb.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn), bufio.NewReader(c)
}

func MustReadLine(tb testing.TB, r *bufio.Reader) string {
	tb.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		tb.Fatalf("read answer: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestFramingLineEndingsAndBlankLines(t *testing.T) {
	_, path := MustServe(t, echo, Options{})
	c, r := MustDial(t, path)
	c.Write([]byte("one\r\n\n   \r\n\t\ntwo\nthree"))
	c.CloseWrite()
	got := map[string]bool{}
	for i := 0; i < 3; i++ {
		got[MustReadLine(t, r)] = true
	}
	for _, want := range []string{"one", "two", "three"} {
		if !got[want] {
			t.Errorf("answers %v: missing %q", got, want)
		}
	}
	if extra, err := r.ReadString('\n'); err == nil {
		t.Errorf("blank lines were answered: extra answer %q", extra)
	}
}

func TestTooLargeKeepsConnection(t *testing.T) {
	_, path := MustServe(t, echo, Options{MaxRequestBytes: 64})
	c, r := MustDial(t, path)
	c.Write([]byte(strings.Repeat("x", 64) + "\n"))      // exactly the limit
	c.Write([]byte(strings.Repeat("y", 200_000) + "\n")) // far over, longer than the read buffer
	c.Write([]byte("after\n"))
	// Answers may come in any order: the echo runs in its own goroutine.
	got := map[string]bool{}
	for i := 0; i < 3; i++ {
		got[MustReadLine(t, r)] = true
	}
	tooLarge := sidecar.AppendError(nil, nil, sidecar.Errorf(sidecar.CodeTooLarge, "request line is over 64 bytes"))
	for _, want := range []string{strings.Repeat("x", 64), strings.TrimSuffix(string(tooLarge), "\n"), "after"} {
		if !got[want] {
			t.Errorf("answers %d: missing %.80q", len(got), want)
		}
	}
}

func TestBackPressureStopsReadingWithoutDropping(t *testing.T) {
	release := make(chan struct{})
	var running, peak atomic.Int64
	h := handlerFunc(func(_ context.Context, line []byte) string {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return string(line)
	})
	_, path := MustServe(t, h, Options{MaxConnInflight: 2})
	c, r := MustDial(t, path)
	for i := 0; i < 10; i++ {
		c.Write([]byte{byte('a' + i), '\n'})
	}
	for running.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	got := map[string]bool{}
	for i := 0; i < 10; i++ {
		got[MustReadLine(t, r)] = true
	}
	if len(got) != 10 {
		t.Errorf("answers: got %d distinct, want 10", len(got))
	}
	if p := peak.Load(); p > 2 {
		t.Errorf("handlers in flight at once: got %d, want <= 2", p)
	}
}

func TestClientThatNeverReadsStallsNoOne(t *testing.T) {
	big := strings.Repeat("z", 64<<10)
	h := handlerFunc(func(_ context.Context, line []byte) string {
		if string(line) == "ping" {
			return "pong"
		}
		return big
	})
	_, path := MustServe(t, h, Options{MaxConnInflight: 8})
	hog, _ := MustDial(t, path)
	go func() {
		for i := 0; i < 10_000; i++ {
			if _, err := hog.Write([]byte("fill\n")); err != nil {
				return
			}
		}
	}()
	c, r := MustDial(t, path)
	for i := 0; i < 20; i++ {
		c.Write([]byte("ping\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got := MustReadLine(t, r); got != "pong" {
			t.Fatalf("got %q, want pong", got)
		}
	}
}

func TestHalfCloseStillGetsAnswers(t *testing.T) {
	h := handlerFunc(func(_ context.Context, line []byte) string {
		time.Sleep(100 * time.Millisecond) // outlive the client's write side
		return string(line)
	})
	_, path := MustServe(t, h, Options{})
	c, r := MustDial(t, path)
	c.Write([]byte("late\n"))
	c.CloseWrite()
	if got := MustReadLine(t, r); got != "late" {
		t.Errorf("got %q, want late", got)
	}
}

func TestDisconnectCancelsRequests(t *testing.T) {
	causes := make(chan error, 1)
	h := handlerFunc(func(ctx context.Context, line []byte) string {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return "gone"
	})
	_, path := MustServe(t, h, Options{})
	c, _ := MustDial(t, path)
	c.Write([]byte("wait\n"))
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case cause := <-causes:
		if !errors.Is(cause, sidecar.ErrClientGone) {
			t.Errorf("cause: got %v, want ErrClientGone", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request not cancelled after the client disconnected")
	}
}

func TestDrainAbortAnswersInFlight(t *testing.T) {
	started := make(chan struct{}, 1)
	h := handlerFunc(func(ctx context.Context, line []byte) string {
		started <- struct{}{}
		<-ctx.Done()
		if errors.Is(context.Cause(ctx), sidecar.ErrShuttingDown) {
			return "shutting_down"
		}
		return "other"
	})
	s, path := MustServe(t, h, Options{})
	c, r := MustDial(t, path)
	c.Write([]byte("x\n"))
	<-started
	s.StopReading()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after StopReading: %v, want removed", err)
	}
	select {
	case <-s.Idle():
		t.Fatal("idle while a request is in flight")
	default:
	}
	s.Abort(sidecar.ErrShuttingDown)
	<-s.Idle()
	if got := MustReadLine(t, r); got != "shutting_down" {
		t.Errorf("got %q, want shutting_down", got)
	}
}

func TestListen(t *testing.T) {
	t.Run("leftover socket replaced", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "f.sock")
		old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		old.SetUnlinkOnClose(false)
		old.Close()
		ln, err := Listen(path, 0o660)
		if err != nil {
			t.Fatalf("got %v, want the leftover replaced", err)
		}
		defer ln.Close()
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o660 {
			t.Errorf("mode: got %v (%v), want 0660", fi.Mode().Perm(), err)
		}
	})
	t.Run("live socket refused", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "f.sock")
		live, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if _, err := Listen(path, 0o660); !errors.Is(err, ErrInUse) {
			t.Errorf("got %v, want ErrInUse", err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("live socket file removed: %v", err)
		}
	})
	t.Run("regular file kept", func(t *testing.T) {
		path := filepath.Join(shortDir(t), "f.sock")
		os.WriteFile(path, []byte("data"), 0o600)
		if _, err := Listen(path, 0o660); err == nil {
			t.Error("got nil, want an error for a path that is not a socket")
		}
		if b, _ := os.ReadFile(path); string(b) != "data" {
			t.Error("regular file was changed")
		}
	})
	t.Run("missing directory made", func(t *testing.T) {
		dir := filepath.Join(shortDir(t), "run")
		ln, err := Listen(filepath.Join(dir, "f.sock"), 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o750 {
			t.Errorf("directory mode: got %v (%v), want 0750", fi.Mode().Perm(), err)
		}
	})
}

func TestManyConcurrentRequestsAnsweredOnce(t *testing.T) {
	h := handlerFunc(func(_ context.Context, line []byte) string {
		time.Sleep(time.Millisecond)
		return string(line)
	})
	_, path := MustServe(t, h, Options{MaxConnInflight: 16})
	c, r := MustDial(t, path)
	const n = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w := bufio.NewWriter(c)
		for i := 0; i < n; i++ {
			w.WriteString(strings.Repeat("k", i%7) + string(rune('A'+i%26)) + itoa(i) + "\n")
		}
		w.Flush()
	}()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		seen[MustReadLine(t, r)]++
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("distinct answers: got %d, want %d", len(seen), n)
	}
	for k, v := range seen {
		if v != 1 {
			t.Errorf("%q answered %d times", k, v)
		}
	}
}

func itoa(i int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		if i /= 10; i == 0 {
			return string(b)
		}
	}
}
