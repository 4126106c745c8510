//go:build !node

package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/cofferhq/coffer/internal/server/audit"
	"github.com/spf13/cobra"
)

func defaultAuditFile() string { return filepath.Join(".coffer", "audit.log") }

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Check and read the audit log"}
	var files []string
	var rotated bool
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain: any edited, removed or reordered line is reported",
		Long: `Check the audit log's hash chain: any edited, removed or reordered line is
reported. Give a rotated log's files oldest first, each with --file, to
check also that each file continues the one before it; --rotated adds the
files the server rotated itself (--audit-max-size-mb) before each file.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if rotated {
				var all []string
				for _, f := range files {
					names, err := audit.Rotated(f)
					if err != nil {
						return err
					}
					all = append(append(all, names...), f)
				}
				files = all
			}
			return a.verifyAudit(files)
		},
	}
	verify.Flags().BoolVar(&rotated, "rotated", false, "also check the files the server rotated itself ({file}-{UTC time}), oldest first, before each file")
	verify.Flags().StringSliceVarP(&files, "file", "f", []string{defaultAuditFile()}, "audit log file; repeat for a rotated log's files, oldest first")
	var tailFile string
	var follow bool
	var lines int
	tail := &cobra.Command{
		Use: "tail", Short: "Print the last lines of the audit log, and with --follow, new lines as they come", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return tailLog(c.Context(), a.stdout, tailFile, lines, follow)
		},
	}
	tail.Flags().StringVarP(&tailFile, "file", "f", defaultAuditFile(), "audit log file")
	tail.Flags().BoolVar(&follow, "follow", false, "keep printing new lines until interrupted")
	tail.Flags().IntVarP(&lines, "lines", "n", 20, "how many of the last lines to print")
	cmd.AddCommand(verify, tail)
	return cmd
}

// verifyAudit checks each file's chain and, between consecutive files,
// that the later one continues the earlier.
func (a *app) verifyAudit(files []string) error {
	var before audit.Chain
	total := 0
	for i, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		c, err := audit.Verify(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: TAMPERED OR DAMAGED: %w", name, err)
		}
		if i > 0 && !c.Continues(before) {
			return fmt.Errorf("%s does not continue %s: a file between them is missing, or they are not given oldest first", name, files[i-1])
		}
		fmt.Fprintf(a.stdout, "%s: %d lines, chain intact\n", name, c.Lines)
		if c.Lines > 0 {
			before = c
		}
		total += c.Lines
	}
	if len(files) > 1 {
		fmt.Fprintf(a.stdout, "%d files, %d lines, one chain\n", len(files), total)
	}
	return nil
}

// tailLog prints the last n lines of path, then follows it if asked.
func tailLog(ctx context.Context, w io.Writer, path string, n int, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { f.Close() }() // f changes when the log is rotated
	var ring []string
	rd := bufio.NewReader(f)
	for {
		line, err := rd.ReadString('\n')
		if line != "" && line[len(line)-1] == '\n' {
			ring = append(ring, line)
			if len(ring) > n {
				ring = ring[1:]
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	for _, l := range ring {
		io.WriteString(w, l)
	}
	if !follow {
		return nil
	}
	var partial string
	for {
		line, err := rd.ReadString('\n')
		partial += line
		if err == nil {
			io.WriteString(w, partial)
			partial = ""
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		// At the end of a file rotated away, go on with the one now at
		// path once the server has written to it: it finishes the old
		// file first, so whatever the old one gained since is read first.
		if nf := rotated(f, path); nf != nil && partial == "" {
			for {
				line, err := rd.ReadString('\n')
				if err != nil {
					break // a torn end: the server writes whole lines
				}
				io.WriteString(w, line)
			}
			f.Close()
			f, rd = nf, bufio.NewReader(nf)
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rotated returns the file now at path, opened, if it is not f and has
// been written to.
func rotated(f *os.File, path string) *os.File {
	cur, err := f.Stat()
	if err != nil {
		return nil
	}
	named, err := os.Stat(path)
	if err != nil || os.SameFile(cur, named) || named.Size() == 0 {
		return nil
	}
	nf, err := os.Open(path)
	if err != nil {
		return nil
	}
	return nf
}
