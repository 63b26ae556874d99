package sidecar

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/fender-sidecar/fender/h1"
	"github.com/fender-sidecar/fender/policy"
)

// outcome is what one upstream attempt came to.
type outcome struct {
	status     int
	header     http.Header
	body       []byte
	class      policy.Class
	err        *Error // nil on success
	retryAfter time.Duration
	hasRA      bool
	failure    bool            // a breaker failure
	final      bool            // the request itself is over (deadline, client gone, shutdown)
	stream     *upstreamStream // an open streamed answer, first chunk read
}

// retry makes the attempts of one request with go-resiliency's retrier and
// returns the last outcome and the number of attempts made.
func (s *Service) retry(ctx context.Context, up *upstream, lp *livePolicy, br *policy.Breaker, req *Request, retries int) (last outcome, attempts int) {
	var extra time.Duration // wait beyond the retrier's own, before the next attempt
	holding := false        // a retry-budget token is held
	defer func() {
		if holding {
			up.budget.EndRetry()
		}
	}()
	work := func(ctx context.Context, k int) error {
		if extra > 0 {
			t := time.NewTimer(extra)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return errStop
			}
		}
		if ctx.Err() != nil {
			return errStop // no attempt starts after the deadline
		}
		var o outcome
		err := br.Try(func() bool {
			o = s.attempt(ctx, up, lp, req)
			return o.failure
		})
		if holding {
			up.budget.EndRetry()
			holding = false
		}
		if err != nil {
			if attempts == 0 {
				last = outcome{err: Errorf(CodeCircuitOpen, "circuit breaker for %s is open", breakerName(up.name, br.Model()))}
			}
			return errStop
		}
		attempts++
		last = o
		if o.class != policy.Transient {
			return nil
		}
		if o.final || k >= retries || br.State() == policy.Open {
			return errStop
		}
		wait := lp.JitteredBackoff(k, rand.Float64())
		if o.hasRA && o.retryAfter > wait {
			wait = o.retryAfter
		}
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(dl) {
			return errStop // answer at once rather than wait past the deadline
		}
		if !up.budget.TryRetry(lp.RetryBudget, lp.RetryBudgetMin) {
			s.hooks.RetryBudgetExhausted(up.name)
			return errStop
		}
		holding = true
		s.rec.Retry(up.name)
		s.hooks.Retry(up.name)
		extra = max(wait-lp.MinBackoff(k), 0)
		return errRetry
	}
	_ = lp.retrier.RunFn(ctx, work)
	if last.err == nil && attempts == 0 {
		last.err = Errorf(CodeTimeout, "deadline passed before the first attempt")
	}
	return last, attempts
}

func breakerName(upstream, model string) string {
	if model == "" {
		return upstream
	}
	return upstream + ":" + model
}

// attempt sends the request to the upstream once, under the per-attempt
// timeout. A streamed 2xx answer is read up to its first chunk only, with
// the timeout applying to each gap between reads; the outcome then carries
// the open stream.
func (s *Service) attempt(ctx context.Context, up *upstream, lp *livePolicy, req *Request) (o outcome) {
	var actx context.Context
	var cancel context.CancelCauseFunc
	var idle *idleTimer
	if req.Stream {
		actx, cancel = context.WithCancelCause(ctx)
		idle = newIdleTimer(lp.Timeout, func() { cancel(errIdle) })
	} else {
		var stop context.CancelFunc
		actx, stop = context.WithTimeout(ctx, lp.Timeout)
		cancel = func(error) { stop() }
	}
	keep := false // the stream outlives the attempt
	defer func() {
		if !keep {
			if idle != nil {
				idle.stop()
			}
			cancel(nil)
		}
	}()
	start := time.Now()
	defer func() { s.hooks.Attempt(up.name, req.Model, o.label(), time.Since(start)) }()
	resp, err := up.send(actx, req)
	if err != nil {
		if rerr, ok := errors.AsType[*h1.RequestError](err); ok {
			return outcome{class: policy.Permanent, err: Errorf(CodeBadRequest, "cannot build the upstream request: %v", rerr.Err)}
		}
		return transportFailure(ctx, actx, err, lp.Timeout)
	}
	for k := range resp.Header {
		if hopHeaders[k] {
			delete(resp.Header, k)
		}
	}
	limit := s.opts.MaxResponseBytes
	if req.Stream && resp.StatusCode >= 200 && resp.StatusCode < 300 {
		st, err := openStream(actx, cancel, idle, resp, limit)
		if err != nil {
			resp.Body.Close()
			if errors.Is(err, errTooLarge) {
				return outcome{class: policy.Permanent, err: Errorf(CodeTooLarge, "upstream stream chunk is over %d bytes", limit)}
			}
			return transportFailure(ctx, actx, err, lp.Timeout)
		}
		keep = true
		return outcome{status: resp.StatusCode, header: resp.Header, class: policy.Success, stream: st}
	}
	defer resp.Body.Close()
	data, err := readBody(resp, limit)
	if err != nil {
		return transportFailure(ctx, actx, err, lp.Timeout)
	}
	o = outcome{status: resp.StatusCode, header: resp.Header, body: data, class: policy.ClassifyStatus(resp.StatusCode)}
	if int64(len(data)) > limit {
		return outcome{class: policy.Permanent, err: Errorf(CodeTooLarge, "upstream body is over %d bytes", limit)}
	}
	if o.class != policy.Success {
		o.err = &Error{Code: CodeUpstreamStatus, Message: "upstream answered " + resp.Status, Retryable: policy.RetryableStatus(o.status)}
		o.failure = o.class == policy.Transient
		if o.status == http.StatusTooManyRequests || o.status == http.StatusServiceUnavailable {
			o.retryAfter, o.hasRA = policy.ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
	}
	return o
}

// send makes one HTTP exchange with the upstream; the answer's body is
// still to be read. A request that cannot be sent as given is an
// *h1.RequestError.
func (up *upstream) send(ctx context.Context, req *Request) (*http.Response, error) {
	h := make(http.Header, len(req.Headers)+1)
	setHeaders(h, req)
	body := req.Body
	if body == nil && req.BodyText != nil {
		body = []byte(*req.BodyText)
	}
	if up.h1 != nil {
		return up.h1.Do(ctx, &h1.Request{Method: req.Method, Path: req.Path, Header: h, Body: body})
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, up.base+req.Path, rd)
	if err != nil {
		return nil, &h1.RequestError{Err: err}
	}
	hreq.Header = h
	return up.client.Do(hreq)
}

// readBody reads an answer's body, up to limit+1 bytes (one more than
// allowed, so that the caller sees it is too large): into one exact buffer
// when the length is known. (A HEAD answer has a length but no body.)
func readBody(resp *http.Response, limit int64) ([]byte, error) {
	if resp.Body == http.NoBody {
		return []byte{}, nil
	}
	if n := resp.ContentLength; n >= 0 && n <= limit {
		data := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, data); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return data, nil
	}
	return io.ReadAll(io.LimitReader(resp.Body, limit+1))
}

// transportFailure classifies an attempt that got no complete answer.
func transportFailure(ctx, actx context.Context, err error, timeout time.Duration) outcome {
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		switch {
		case errors.Is(cause, ErrShuttingDown):
			return outcome{class: policy.Transient, final: true, err: Errorf(CodeShuttingDown, "drain timeout ended the request")}
		case errors.Is(cause, ErrClientGone):
			return outcome{class: policy.Transient, final: true, err: Errorf(CodeUnavailable, "client disconnected")}
		}
		return outcome{class: policy.Transient, final: true, failure: true, err: Errorf(CodeTimeout, "deadline passed during the attempt")}
	}
	if cause := context.Cause(actx); errors.Is(cause, context.DeadlineExceeded) || errors.Is(cause, errIdle) {
		return outcome{class: policy.Transient, failure: true, err: Errorf(CodeTimeout, "attempt timed out after %s", timeout)}
	}
	return outcome{class: policy.Transient, failure: true, err: Errorf(CodeUnavailable, "%s", err.Error())}
}

// setHeaders copies the request's headers to h, dropping Host, Content-Length,
// the hop-by-hop headers and those named by Connection.
func setHeaders(h http.Header, req *Request) {
	var named map[string]bool
	for _, kv := range req.Headers {
		if strings.EqualFold(kv[0], "Connection") {
			for _, n := range strings.Split(kv[1], ",") {
				if n = strings.TrimSpace(n); n != "" {
					if named == nil {
						named = map[string]bool{}
					}
					named[http.CanonicalHeaderKey(n)] = true
				}
			}
		}
	}
	for _, kv := range req.Headers {
		k := http.CanonicalHeaderKey(kv[0])
		if !dropHeader(k, named) {
			h.Add(k, kv[1])
		}
	}
	if req.Body != nil && h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json")
	}
}

// label is the attempt's result label: ok, status_4xx, status_429,
// status_5xx, timeout or network.
func (o *outcome) label() string {
	switch {
	case o.status == http.StatusTooManyRequests:
		return "status_429"
	case o.status >= 500:
		return "status_5xx"
	case o.status >= 400:
		return "status_4xx"
	case o.status > 0:
		return "ok"
	case o.err != nil && o.err.Code == CodeTimeout:
		return "timeout"
	}
	return "network"
}
