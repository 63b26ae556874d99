// Package e2e holds the end-to-end tests of fender: TestMain builds the real
// binary once, and each test runs it against fake upstreams (httptest servers
// with real fault injection) and talks to it over a real Unix socket, the way
// an application would. The contract under test is docs/PROTOCOL.md.
//
// Run with: go test -race ./e2e/
package e2e
