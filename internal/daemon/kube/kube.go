// Package kube gives node daemons and the webhook their Kubernetes client
// configuration.
package kube

import (
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/cofferhq/coffer/internal/daemon"
)

// Config returns cfg when it is set (tests pass their apiserver's), else
// the configuration in the kubeconfig file, else the in-cluster one. option
// names the kubeconfig option in errors.
func Config(cfg *rest.Config, option, kubeconfig string) (*rest.Config, error) {
	if cfg != nil {
		return rest.CopyConfig(cfg), nil
	}
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, daemon.Invalid(option, "%s: %v", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, daemon.Invalid(option, "is required outside a cluster (%v)", err)
	}
	return c, nil
}
