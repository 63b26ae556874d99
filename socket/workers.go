package socket

import (
	"sync/atomic"
	"time"
)

// workers runs request handlers on goroutines that outlive one request.
// A handler's call into an upstream needs a deep stack (net/http alone takes
// 8–16 KiB); a goroutine started per request begins with a small one and
// grows it by copying, two or three times per request. A worker that stays
// keeps its stack between requests. At most maxIdleWorkers wait for the
// next request, each for at most workerIdle; the others end, so a burst's
// workers and their stacks do not linger.
//
// The number of workers running is bounded by the requests in flight (at
// most FENDER_MAX_CONN_INFLIGHT per connection, and every request past
// FENDER_MAX_INFLIGHT is answered overloaded at once) plus one reader per
// connection that a worker took over.
type workers struct {
	tasks chan task    // unbuffered: a send succeeds only into an idle worker's hands
	idle  atomic.Int32 // workers waiting on tasks, or about to
}

// task is one request line to handle on c (its slot and work count
// already taken), or the reading of c to take over.
type task struct {
	c    *conn
	line []byte
	pre  any  // what FastHandler.TryHandle made of line, or nil
	read bool // take over reading c instead
}

func (t task) do() {
	if t.read {
		t.c.readLoop()
	} else {
		t.c.handle(t.line, t.pre)
	}
}

const (
	maxIdleWorkers = 64
	workerIdle     = 5 * time.Second
)

func newWorkers() *workers { return &workers{tasks: make(chan task)} }

// run hands t to an idle worker, or starts a new one.
func (w *workers) run(t task) {
	select {
	case w.tasks <- t:
	default:
		go w.work(t)
	}
}

func (w *workers) work(t task) {
	var idle *time.Timer
	for {
		t.do()
		if w.idle.Add(1) > maxIdleWorkers {
			w.idle.Add(-1)
			break
		}
		if idle == nil {
			idle = time.NewTimer(workerIdle)
		} else {
			idle.Reset(workerIdle)
		}
		select {
		case t = <-w.tasks:
			w.idle.Add(-1)
			continue
		case <-idle.C:
			w.idle.Add(-1)
		}
		break
	}
	if idle != nil {
		idle.Stop()
	}
}
