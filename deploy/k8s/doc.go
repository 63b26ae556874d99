// Package k8s holds the tests of fender's Kubernetes example and container
// image: the manifests beside this file decode strictly into the Kubernetes
// API types, render with kustomize, run fender as a native sidecar with the
// settings a pod needs, and configure the real fender binary, built with the
// Dockerfile's own command, so that it starts.
//
// It is a module of its own so that fender's go.mod never requires the
// Kubernetes packages; `go test ./...` at the repository root does not
// descend into it. Run its tests with:
//
//	cd deploy/k8s && go test ./...
package k8s
