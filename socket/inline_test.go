package socket

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTakeover: a connection's only request is handled by its reader; when
// it takes longer than takeover, a worker takes over reading, so a line
// sent after it is answered while it still runs.
func TestTakeover(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // a failing test does not leave the handler waiting
	h := handlerFunc(func(ctx context.Context, line []byte) string {
		if string(line) == "slow" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return string(line)
	})
	_, path := MustServe(t, h, Options{})
	c, r := MustDial(t, path)
	if _, err := c.Write([]byte("slow\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * takeover) // slow is being handled by the reader by now
	if _, err := c.Write([]byte("next\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got := MustReadLine(t, r); got != "next" {
		t.Fatalf("first answer %q, want next while slow still runs", got)
	}
	free()
	if got := MustReadLine(t, r); got != "slow" {
		t.Fatalf("second answer %q, want slow", got)
	}
	// The connection goes on: one line at a time, then several at once.
	for _, l := range []string{"a", "b"} {
		c.Write([]byte(l + "\n"))
		if got := MustReadLine(t, r); got != l {
			t.Fatalf("answer %q, want %q", got, l)
		}
	}
	c.Write([]byte("x\ny\nz\n"))
	seen := map[string]bool{}
	for range 3 {
		seen[MustReadLine(t, r)] = true
	}
	if !seen["x"] || !seen["y"] || !seen["z"] {
		t.Errorf("answers %v, want x, y and z", seen)
	}
}

// TestTakeoverRace sends each next line right about when the takeover fires,
// so that the handler's end and the takeover race; every line must be
// answered exactly once and the connection must keep exactly one reader
// (run with -race).
func TestTakeoverRace(t *testing.T) {
	var n atomic.Int64
	h := handlerFunc(func(_ context.Context, line []byte) string {
		time.Sleep(takeover + time.Duration(n.Add(1)%7-3)*takeover/10)
		return string(line)
	})
	_, path := MustServe(t, h, Options{})
	c, r := MustDial(t, path)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range 60 {
		l := string(rune('A' + i%26))
		if _, err := c.Write([]byte(l + "\n")); err != nil {
			t.Fatal(err)
		}
		if got := MustReadLine(t, r); got != l {
			t.Fatalf("line %d: answer %q, want %q", i, got, l)
		}
	}
}
