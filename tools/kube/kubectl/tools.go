//go:build tools

// Package tools keeps kubectl in this module's go.mod and go.sum, as
// ../tools.go does for the cluster's binaries. kubectl is a module of its
// own so that adding it did not change what the other binaries are built
// from (their cached builds are keyed by ../go.mod and ../go.sum).
package tools

import _ "k8s.io/kubernetes/cmd/kubectl"
