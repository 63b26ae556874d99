// Package sidecar holds fender's domain: the request and response of the wire
// protocol, the error codes, the upstreams and the call pipeline that runs a
// request through the breaker and retrier to an upstream.
//
// The wire error code of every failure is decided here, in one place.
package sidecar

import (
	"errors"
	"fmt"
)

// Code is a wire error code (SPEC section 1).
type Code string

// The wire error codes.
const (
	CodeBadRequest      Code = "bad_request"
	CodeTooLarge        Code = "too_large"
	CodeUnknownUpstream Code = "unknown_upstream"
	CodeForbidden       Code = "forbidden"
	CodeOverloaded      Code = "overloaded"
	CodeCircuitOpen     Code = "circuit_open"
	CodeTimeout         Code = "timeout"
	CodeUnavailable     Code = "unavailable"
	CodeUpstreamStatus  Code = "upstream_status"
	CodeShuttingDown    Code = "shutting_down"
	CodeInternal        Code = "internal"
)

// Retryable reports whether a client may retry a request that failed with c.
// upstream_status depends on the status; see policy.RetryableStatus.
func (c Code) Retryable() bool {
	switch c {
	case CodeOverloaded, CodeCircuitOpen, CodeTimeout, CodeUnavailable, CodeShuttingDown:
		return true
	}
	return false
}

// Error is a failure answered on the wire.
type Error struct {
	Code      Code
	Message   string
	Retryable bool
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf returns an *Error of code c, retryable as the code says.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Message: fmt.Sprintf(format, args...), Retryable: c.Retryable()}
}

// Sentinel causes of a cancelled request context.
var (
	// ErrShuttingDown cancels requests still in flight when the drain timeout ends.
	ErrShuttingDown = errors.New("fender is shutting down")
	// ErrClientGone cancels the requests of a client that disconnected.
	ErrClientGone = errors.New("client disconnected")
)
