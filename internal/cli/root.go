// Package cli wires Coffer's cobra commands. Every command is built
// explicitly from New; nothing registers itself from init.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cofferhq/coffer/internal/version"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/spf13/cobra"
)

// app holds the global flags and the streams of one invocation.
type app struct {
	envFile  string
	output   string
	logLevel string

	stdin          io.Reader
	stdout, stderr io.Writer
}

// Main runs the CLI and returns the process exit code. Errors are printed as
// one line on stderr.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.root()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "ERROR: "+describeError(err))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError marks bad command-line input (exit code 2).
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:           "coffer",
		Short:         "Coffer delivers secrets to workloads: a Key Vault-compatible vault, an identity authority, and Kubernetes node components",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Version + " (compatible with the Secrets Store CSI driver " + version.CompatibleDriver + ")",
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{err.Error() + " (see `" + c.CommandPath() + " --help`)"}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.envFile, "env-file", "", "credentials file written by `coffer dev` (default: $COFFER_ENV_FILE, then ./.coffer/dev.env, then AZURE_* variables)")
	pf.StringVarP(&a.output, "output", "o", "json", "output format: json, table or tsv")
	pf.StringVar(&a.logLevel, "log-level", "info", "log level for servers: debug, info, warn or error")
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		switch a.output {
		case "json", "table", "tsv":
		default:
			return usagef("--output %q is not one of json, table, tsv", a.output)
		}
		if _, err := a.level(); err != nil {
			return err
		}
		return nil
	}
	root.AddCommand(a.commands()...)
	return root
}

func (a *app) level() (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(a.logLevel)); err != nil {
		return 0, usagef("--log-level %q is not one of debug, info, warn, error", a.logLevel)
	}
	return l, nil
}

// logger returns a structured logger on stderr.
func (a *app) logger(json bool) *slog.Logger {
	l, _ := a.level()
	opts := &slog.HandlerOptions{Level: l}
	if json {
		return slog.New(slog.NewJSONHandler(a.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(a.stderr, opts))
}

// optionError turns a daemon's option error into a usage error that names
// the command's flags instead of the library's option fields; other errors
// pass unchanged.
func optionError(err error, flags map[string]string) error {
	if msg, ok := daemon.Rename(err, flags); ok {
		return usagef("%s", msg)
	}
	return err
}
