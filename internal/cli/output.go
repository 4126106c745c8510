//go:build !node

package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// column is one field of table and tsv output.
type column[T any] struct {
	header string
	value  func(T) string
}

// render prints rows in the chosen format. json prints obj (a row or the
// list), the others print one line per row, as `az -o table|tsv` does.
func render[T any](w io.Writer, format string, obj any, rows []T, cols []column[T]) error {
	switch format {
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		var hdr, rule []string
		for _, c := range cols {
			hdr = append(hdr, c.header)
			rule = append(rule, strings.Repeat("-", len(c.header)))
		}
		fmt.Fprintln(tw, strings.Join(hdr, "\t"))
		fmt.Fprintln(tw, strings.Join(rule, "\t"))
		for _, r := range rows {
			fmt.Fprintln(tw, strings.Join(cells(r, cols), "\t"))
		}
		return tw.Flush()
	case "tsv":
		for _, r := range rows {
			fmt.Fprintln(w, strings.Join(cells(r, cols), "\t"))
		}
		return nil
	default:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(obj)
	}
}

func cells[T any](r T, cols []column[T]) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c.value(r))
	}
	return out
}
