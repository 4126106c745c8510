// Package chartrender renders a Helm chart with Helm's own Go library, as
// `helm template` does, into objects a client can create: the rendering
// of `coffer install`, for charts read from a directory.
package chartrender

import (
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/cofferhq/coffer/internal/cli/install"
)

// Load reads the chart in dir.
func Load(dir string) (*chartv2.Chart, error) { return loader.Load(dir) }

// Render renders c for release name in namespace with vals over the
// chart's defaults, and returns its objects ordered by template file name.
func Render(c *chartv2.Chart, name, namespace string, vals map[string]any) ([]*unstructured.Unstructured, error) {
	return install.Render(c, name, namespace, vals)
}

// Merge merges src into dst, map by map, and returns dst.
func Merge(dst, src map[string]any) map[string]any { return install.Merge(dst, src) }
