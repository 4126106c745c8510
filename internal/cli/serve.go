package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

func (a *app) serverCmd() *cobra.Command {
	var cfg server.Config
	var listen, suffix string
	var publicPort int
	var common commonServe
	c := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: vault API, authority and management API (TLS required)",
		Long: `Run the control plane on one HTTPS listener. Vaults are served at
https://{vault}.{dns-suffix}:{public-port}/ and the authority at
https://{dns-suffix}:{public-port}/. The root key comes from --root-key-file or
COFFER_ROOT_KEY. Initialise a new data directory first with
` + "`coffer operator init`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "data-dir", "dns-suffix"); err != nil {
				return err
			}
			server.TuneGC()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			defer ln.Close()
			if publicPort == 0 {
				publicPort = ln.Addr().(*net.TCPAddr).Port
			}
			if cfg.Endpoints, err = endpoint.New(suffix, publicPort); err != nil {
				return usagef("%v", err)
			}
			cfg.Log = a.logger(true)
			if err := common.apply(&cfg); err != nil {
				return err
			}
			srv, err := server.Open(c.Context(), cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			if err := common.serveMetrics(c.Context(), srv, cfg.Log); err != nil {
				return err
			}
			if _, ok, err := bootstrap.Load(c.Context(), srv.Store().Barrier); err == nil && !ok {
				cfg.Log.Warn("this installation has no administrator yet: stop the server and run `coffer operator init --data-dir " + cfg.DataDir + "`")
			}
			cfg.Log.Info("coffer server listening", "addr", ln.Addr().String(), "authority", cfg.Endpoints.AuthorityURL(), "vaults", "https://{vault}."+cfg.Endpoints.Apex()+"/", "rootKeyId", srv.Store().Barrier.RootKeyID())
			return srv.Serve(c.Context(), ln)
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory of the embedded store")
	f.StringVar(&cfg.RootKeyFile, "root-key-file", "", "file holding the root key (default: $"+rootkey.EnvVar+")")
	f.StringVar(&listen, "listen", ":8443", "address to listen on")
	f.StringVar(&suffix, "dns-suffix", "", "DNS suffix of vault hosts, such as vault.example.com")
	f.IntVar(&publicPort, "public-port", 0, "HTTPS port clients use, if a proxy or port mapping changes it (default: the listen port)")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "PEM certificate for *.{dns-suffix} and {dns-suffix}")
	f.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "PEM private key of the certificate")
	f.BoolVar(&cfg.InsecureHTTP, "insecure-http", false, "serve plain HTTP, only behind a TLS-terminating proxy")
	f.DurationVar(&cfg.TokenLifetime, "token-lifetime", time.Hour, "lifetime of issued access tokens (5m to 24h)")
	f.DurationVar(&cfg.PurgeInterval, "purge-interval", time.Minute, "how often deleted objects past retention are purged")
	common.bind(c, "127.0.0.1:9464")
	return c
}

// commonServe holds the flags `coffer server` and `coffer dev` share.
type commonServe struct {
	rateLimit   float64
	rateBurst   int
	fedCAFile   string
	auditLog    string
	metricsAddr string
}

func (o *commonServe) bind(c *cobra.Command, metricsDefault string) {
	f := c.Flags()
	f.Float64Var(&o.rateLimit, "token-rate-limit", 0, "token requests per second allowed per client (default 20; negative: unlimited)")
	f.IntVar(&o.rateBurst, "token-rate-burst", 0, "token request burst per client (default 40)")
	f.StringVar(&o.fedCAFile, "federation-ca-file", "", "PEM CAs to trust, besides the system roots, for federated issuers (such as a cluster's service-account issuer)")
	f.StringVar(&o.auditLog, "audit-log", "", "audit log file (default: {data-dir}/audit.log)")
	f.StringVar(&o.metricsAddr, "metrics-addr", metricsDefault, "address for Prometheus metrics over plain HTTP (empty: off)")
}

func (o *commonServe) apply(cfg *server.Config) error {
	cfg.TokenRateLimit, cfg.TokenRateBurst, cfg.AuditLog = o.rateLimit, o.rateBurst, o.auditLog
	if o.fedCAFile != "" {
		roots, err := httpclient.RootPool(o.fedCAFile)
		if err != nil {
			return fmt.Errorf("--federation-ca-file: %w", err)
		}
		cfg.FederationRoots = roots
	}
	return nil
}

// serveMetrics serves /metrics on its own listener until ctx ends.
func (o *commonServe) serveMetrics(ctx context.Context, srv *server.Server, log *slog.Logger) error {
	if o.metricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", o.metricsAddr)
	if err != nil {
		return fmt.Errorf("--metrics-addr %s: %w", o.metricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", srv.MetricsHandler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		hs.Close()
	}()
	go hs.Serve(ln)
	log.Info("metrics listening", "addr", ln.Addr().String())
	return nil
}

type devOptions struct {
	dataDir, listenAddr, suffix string
	port                        int
	writeHosts                  bool
	tokenLifetime               time.Duration
	common                      commonServe
}

func (a *app) devCmd() *cobra.Command {
	var o devOptions
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run everything in one process on the embedded store, with a generated CA",
		Long: `Run the vault server and the authority in one process on the embedded
store. The first run creates the root key, a CA and server certificate, a
tenant, an administrator and a vault named demo; later runs reuse them. It
writes {data-dir}/dev.env with credentials for the CLI and the Azure SDKs.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runDev(c.Context(), o) },
	}
	f := c.Flags()
	f.StringVar(&o.dataDir, "data-dir", ".coffer", "data directory")
	f.IntVar(&o.port, "port", 8443, "HTTPS port (0 picks a free one)")
	f.StringVar(&o.listenAddr, "listen-address", "127.0.0.1", "address to bind")
	f.StringVar(&o.suffix, "dns-suffix", endpoint.DefaultSuffix, "DNS suffix of vault hosts")
	f.BoolVar(&o.writeHosts, "write-hosts", false, "add /etc/hosts entries for the authority and every vault, for clients that do not resolve *.localhost")
	f.DurationVar(&o.tokenLifetime, "token-lifetime", time.Hour, "lifetime of issued access tokens (5m to 24h)")
	o.common.bind(c, "")
	return c
}

func (a *app) runDev(ctx context.Context, o devOptions) error {
	server.TuneGC()
	dir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyFile := filepath.Join(dir, "root.key")
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
			return err
		}
	}
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), o.suffix, time.Now())
	if err != nil {
		return fmt.Errorf("development certificates: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(o.listenAddr, strconv.Itoa(o.port)))
	if err != nil {
		return fmt.Errorf("listen: %w (is another coffer dev running? pick another --port)", err)
	}
	defer ln.Close()
	ep, err := endpoint.New(o.suffix, ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		return usagef("%v", err)
	}
	log := a.logger(false)
	cfg := server.Config{
		DataDir: dir, RootKeyFile: keyFile, Endpoints: ep,
		TLSCertFile: files.Cert, TLSKeyFile: files.Key, TokenLifetime: o.tokenLifetime, Log: log,
	}
	if err := o.common.apply(&cfg); err != nil {
		return err
	}
	srv, err := server.Open(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := o.common.serveMetrics(ctx, srv, log); err != nil {
		return err
	}

	st, secret, err := bootstrap.Ensure(ctx, srv.Store().Barrier, srv.Authority, srv.Roles)
	if err != nil {
		return err
	}
	envPath := devenv.Path(dir)
	if secret == "" {
		prev, _ := devenv.Read(envPath)
		if secret, _, err = bootstrap.AdminSecret(ctx, srv.Authority, st, prev.ClientSecret); err != nil {
			return err
		}
	}
	if _, err := srv.Vaults.Get("demo"); errors.Is(err, vault.ErrNotFound) {
		tenant, err := srv.Authority.Tenant(ctx, st.TenantID)
		if err != nil {
			return err
		}
		if _, err := srv.Vaults.Create(ctx, vault.Vault{Name: "demo", TenantID: st.TenantID, SubscriptionID: tenant.SubscriptionID, CreatedBy: st.AdminObjectID}); err != nil {
			return err
		}
	}
	env := devenv.Env{
		VaultURL: ep.VaultURL("demo"), TenantID: st.TenantID, ClientID: st.AdminAppID, ClientSecret: secret,
		AuthorityHost: ep.AuthorityURL() + "/", CAFile: files.CACert, DataDir: dir,
	}
	if err := env.Write(envPath); err != nil {
		return fmt.Errorf("write %s: %w", envPath, err)
	}
	if o.writeHosts {
		if err := writeHosts("/etc/hosts", ep, srv.Vaults.List("")); err != nil {
			return fmt.Errorf("--write-hosts: %w", err)
		}
	}
	a.banner(env, ep, envPath)
	return srv.Serve(ctx, ln)
}

func (a *app) banner(env devenv.Env, ep endpoint.Endpoints, envPath string) {
	rel := envPath
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, envPath); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	envFlag := ""
	if rel != filepath.Join(".coffer", devenv.FileName) {
		envFlag = " --env-file " + envPath
	}
	fmt.Fprintf(a.stdout, `Coffer dev server is running.

  Vault URL:      %s
  Authority:      %s
  Tenant:         %s
  Admin client:   %s (secret in %s)
  CA certificate: %s
  Data:           %s

Try it (use "go run ./cmd/coffer" in place of "coffer" from a source checkout):
  coffer secret set%s --vault-name demo --name greeting --value hello
  coffer secret show%s --vault-name demo --name greeting
  coffer vault create%s --name team-a

Azure SDK clients: set -a; . %s; set +a
  then point them at $COFFER_VAULT_URL with authority host $AZURE_AUTHORITY_HOST
  (Go: azidentity DisableInstanceDiscovery). Clients that cannot resolve
  *.localhost need /etc/hosts entries: restart with --write-hosts.

Press Ctrl-C to stop.
`, env.VaultURL, env.AuthorityHost, env.TenantID, env.ClientID, rel, env.CAFile, env.DataDir,
		envFlag, envFlag, envFlag, envPath)
}

const (
	hostsBegin = "# BEGIN coffer dev"
	hostsEnd   = "# END coffer dev"
)

// writeHosts replaces Coffer's block in a hosts file with loopback entries
// for the apex and every vault.
func writeHosts(path string, ep endpoint.Endpoints, vaults []vault.Vault) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var kept []string
	skip := false
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		switch strings.TrimSpace(line) {
		case hostsBegin:
			skip = true
			continue
		case hostsEnd:
			skip = false
			continue
		}
		if !skip {
			kept = append(kept, line)
		}
	}
	names := []string{ep.Suffix}
	for _, v := range vaults {
		names = append(names, v.Name+"."+ep.Suffix)
	}
	kept = append(kept, hostsBegin, "127.0.0.1 "+strings.Join(names, " "), hostsEnd)
	return os.WriteFile(path, []byte(strings.Join(kept, "\n")+"\n"), 0o644)
}
