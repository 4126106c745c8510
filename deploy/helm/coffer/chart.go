// Package coffer holds the chart's files for the coffer binary, so that
// `coffer install` installs the chart of its own release. Helm skips this
// file (.helmignore).
package coffer

import "embed"

// Files are the chart's files, paths relative to the chart's directory
// ("all:" keeps the templates named _*.tpl, which embed skips otherwise).
//
//go:embed Chart.yaml values.yaml all:templates crds
var Files embed.FS
