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
	var file string
	verify := &cobra.Command{
		Use: "verify", Short: "Check the audit log's hash chain: any edited, removed or reordered line is reported", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			n, err := audit.Verify(f)
			if err != nil {
				return fmt.Errorf("%s: TAMPERED OR DAMAGED: %w", file, err)
			}
			fmt.Fprintf(a.stdout, "%s: %d lines, chain intact\n", file, n)
			return nil
		},
	}
	verify.Flags().StringVarP(&file, "file", "f", defaultAuditFile(), "audit log file")
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

// tailLog prints the last n lines of path, then follows it if asked.
func tailLog(ctx context.Context, w io.Writer, path string, n int, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
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
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
