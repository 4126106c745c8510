//go:build tools

// Package tools keeps the Kubernetes commands that the tests
// build in this module's go.mod and go.sum. It is never compiled: the build
// tag only makes `go mod tidy` see the import, so that
// `go build k8s.io/kubernetes/cmd/kube-apiserver` works from this module with
// exactly the pinned versions.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
