// Package daemon holds what the assembly of every Coffer daemon shares: the
// error for a bad option, the process's Prometheus registry, and the plain
// HTTP listener for /metrics and /healthz.
//
// Each daemon package (server, server/dev, node/csidriver, node/provider,
// node/nodeagent, webhook) exposes Options, a constructor that validates
// them and binds every listener, and Run. The CLI and the tests both build
// daemons through that one entry point, so a setting made in one copy of
// the wiring cannot be missing from another.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// OptionError is a missing or invalid option. Option is the field's name in
// the daemon's Options struct; a library does not know the CLI's flags, so
// the CLI, which does, rewrites the name (see Rename).
type OptionError struct {
	Option  string // such as "NodeID"
	Problem string // such as "is required: it names this node in statuses"
}

func (e *OptionError) Error() string { return e.Option + " " + e.Problem }

// Invalid returns an *OptionError for option.
func Invalid(option, format string, args ...any) error {
	return &OptionError{Option: option, Problem: fmt.Sprintf(format, args...)}
}

// Rename rewrites an *OptionError in err's chain with the names that names
// maps options to (flags, say "NodeID" to "--nodeid"), in its option and
// wherever its problem mentions another option, and reports whether it
// found one.
func Rename(err error, names map[string]string) (string, bool) {
	var oe *OptionError
	if !errors.As(err, &oe) {
		return "", false
	}
	msg := oe.Error()
	for option, name := range names {
		msg = replaceWord(msg, option, name)
	}
	return msg, true
}

// replaceWord replaces old in s where it stands as a whole identifier.
func replaceWord(s, old, new string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, old)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := i + len(old)
		whole := (i == 0 || !identChar(s[i-1])) && (end == len(s) || !identChar(s[end]))
		b.WriteString(s[:i])
		if whole {
			b.WriteString(new)
		} else {
			b.WriteString(old)
		}
		s = s[end:]
	}
}

func identChar(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, which every daemon exports beside its own metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// StatusServer serves /metrics and /healthz over plain HTTP, apart from a
// daemon's main listener, so that probes and scrapes never need its TLS or
// its credentials.
type StatusServer struct {
	ln      net.Listener
	hs      *http.Server
	healthy func() error
}

// ListenStatus binds addr for /metrics (from g) and /healthz (healthy's
// answer; nil is always healthy). An empty addr turns the listener off and
// returns a StatusServer that does nothing. option names the address
// option in errors.
func ListenStatus(option, addr string, g prometheus.Gatherer, healthy func() error) (*StatusServer, error) {
	if addr == "" {
		return &StatusServer{}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, Invalid(option, "%s: %v", addr, err)
	}
	s := &StatusServer{ln: ln, healthy: healthy}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", s.health)
	s.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	return s, nil
}

func (s *StatusServer) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.healthy != nil {
		if err := s.healthy(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err.Error())
			return
		}
	}
	fmt.Fprintln(w, "ok")
}

// Addr is the bound address, or "" when the listener is off.
func (s *StatusServer) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Serve serves until ctx ends. It logs where it listens.
func (s *StatusServer) Serve(ctx context.Context, log *slog.Logger) {
	if s.ln == nil {
		return
	}
	go func() {
		<-ctx.Done()
		s.hs.Close()
	}()
	log.Info("metrics and health listening", "addr", s.Addr())
	if err := s.hs.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && ctx.Err() == nil {
		log.Error("metrics and health listener failed", "error", err)
	}
}

// Close releases the listener of a StatusServer that never served.
func (s *StatusServer) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
}
