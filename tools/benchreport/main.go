// Command benchreport writes docs/performance.md and its SVG charts from the
// files the benchmark targets leave in docs/performance/data (make bench-report). It
// is a module of its own so that the plotting library never enters the
// server's dependency graph.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

func main() {
	in := flag.String("in", "docs/performance/data", "directory of the benchmark results")
	out := flag.String("out", "docs/performance.md", "page to write")
	charts := flag.String("charts", "performance", "directory of the charts, relative to the page's")
	flag.Parse()
	if err := run(*in, *out, *charts); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(inDir, out, chartDir string) error {
	in, err := Load(inDir)
	if err != nil {
		return err
	}
	page, err := Render(in, chartDir)
	if err != nil {
		return err
	}
	return Write(page, out, chartDir)
}

// Write saves the page at out and its charts in chartDir beside it. An SVG
// there that the page no longer shows is removed, so that a chart of a
// benchmark whose input has gone does not linger in the tree as if current.
func Write(p Page, out, chartDir string) error {
	dir := filepath.Join(filepath.Dir(out), chartDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, err := filepath.Glob(filepath.Join(dir, "*.svg"))
	if err != nil {
		return err
	}
	for _, f := range old {
		if !slices.ContainsFunc(p.Charts, func(c Chart) bool { return c.Name == filepath.Base(f) }) {
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	for _, c := range p.Charts {
		if err := os.WriteFile(filepath.Join(dir, c.Name), c.SVG, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(out, []byte(p.Markdown), 0o644)
}
