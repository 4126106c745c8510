// Package dev assembles `coffer dev`: a server on the embedded store in one
// data directory, with everything a first run needs made for it (a root
// key, a development CA and server certificate, a tenant with an
// administrator, and a vault named demo) and reused on later runs. It
// leaves dev.env behind for the CLI and the Azure SDKs. The tests start
// their servers through it too.
package dev

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cofferhq/coffer/internal/crypto/pki"
	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/keyvault/vault"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
)

// DemoVault is the vault a first run creates.
const DemoVault = "demo"

// Options configure a dev server.
type Options struct {
	// DataDir holds everything the dev server makes (required).
	DataDir string
	// ListenAddress and Port are where it serves HTTPS; port 0 is a free
	// one (see Server.Addr).
	ListenAddress string
	Port          int
	// DNSSuffix is the suffix of vault hosts (default vault.localhost).
	DNSSuffix string
	// HostsFile, when set, gets loopback entries for the authority and
	// every vault (for clients that do not resolve *.localhost).
	HostsFile string
	// Server holds the server's other options. Its DataDir, RootKeyFile,
	// Listen, DNSSuffix and TLS files are the dev server's own and must
	// be left empty.
	Server server.Options
}

// Dev is a dev server, built and bootstrapped, ready to Run.
type Dev struct {
	*server.Server
	// Env holds the administrator's credentials, as written to EnvFile.
	Env     devenv.Env
	EnvFile string
	State   bootstrap.State
	// Subscription is the tenant's subscription id.
	Subscription string
}

// New makes or reuses what the data directory needs, starts listening,
// bootstraps the tenant and the demo vault, and writes dev.env.
func New(ctx context.Context, o Options) (*Dev, error) {
	if o.DataDir == "" {
		return nil, daemon.Invalid("DataDir", "is required")
	}
	so := o.Server
	if so.DataDir != "" || so.RootKeyFile != "" || so.Listen != "" || so.DNSSuffix != "" || so.TLSCertFile != "" || so.TLSKeyFile != "" {
		return nil, daemon.Invalid("Server", "must leave DataDir, RootKeyFile, Listen, DNSSuffix and the TLS files to the dev server")
	}
	if o.DNSSuffix == "" {
		o.DNSSuffix = endpoint.DefaultSuffix
	}
	if o.ListenAddress == "" {
		o.ListenAddress = "127.0.0.1"
	}
	if o.Port < 0 || o.Port > 65535 {
		return nil, daemon.Invalid("Port", "%d is out of range 0-65535", o.Port)
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create the data directory: %w", err)
	}
	keyFile := filepath.Join(dir, "root.key")
	if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
		if err := rootkey.WriteFile(keyFile, rootkey.Generate()); err != nil {
			return nil, err
		}
	}
	files, err := pki.EnsureDev(filepath.Join(dir, "tls"), o.DNSSuffix, time.Now())
	if err != nil {
		return nil, fmt.Errorf("development certificates: %w", err)
	}
	so.DataDir, so.RootKeyFile, so.DNSSuffix = dir, keyFile, o.DNSSuffix
	so.Listen = net.JoinHostPort(o.ListenAddress, strconv.Itoa(o.Port))
	so.TLSCertFile, so.TLSKeyFile = files.Cert, files.Key
	srv, err := server.New(ctx, so)
	if err != nil {
		var oe *daemon.OptionError
		if errors.As(err, &oe) && oe.Option == "Listen" {
			return nil, daemon.Invalid("Port", "%s (is another coffer dev running? pick another port)", oe.Problem)
		}
		return nil, err
	}
	d := &Dev{Server: srv, EnvFile: devenv.Path(dir)}
	if err := d.bootstrap(ctx, files.CACert, dir); err != nil {
		srv.Close()
		return nil, err
	}
	if o.HostsFile != "" {
		if err := writeHosts(o.HostsFile, srv.Endpoints(), srv.Vaults.List("")); err != nil {
			srv.Close()
			return nil, daemon.Invalid("HostsFile", "%v", err)
		}
	}
	return d, nil
}

// bootstrap makes the tenant, its administrator and the demo vault on a
// first run, finds or resets the administrator's secret on later ones, and
// writes dev.env.
func (d *Dev) bootstrap(ctx context.Context, caFile, dir string) error {
	srv := d.Server
	st, secret, err := bootstrap.Ensure(ctx, srv.Store().Barrier, srv.Authority, srv.Roles)
	if err != nil {
		return err
	}
	if secret == "" {
		// A later run: the secret is only in dev.env, as a hash in the
		// store. A missing or stale file gets a new secret.
		prev, _ := devenv.Read(d.EnvFile)
		if secret, _, err = bootstrap.AdminSecret(ctx, srv.Authority, st, prev.ClientSecret); err != nil {
			return err
		}
	}
	tenant, err := srv.Authority.Tenant(ctx, st.TenantID)
	if err != nil {
		return err
	}
	if _, err := srv.Vaults.Get(DemoVault); errors.Is(err, vault.ErrNotFound) {
		if _, err := srv.Vaults.Create(ctx, vault.Vault{Name: DemoVault, TenantID: st.TenantID, SubscriptionID: tenant.SubscriptionID, CreatedBy: st.AdminObjectID}); err != nil {
			return err
		}
	}
	ep := srv.Endpoints()
	d.State, d.Subscription = st, tenant.SubscriptionID
	d.Env = devenv.Env{
		VaultURL: ep.VaultURL(DemoVault), TenantID: st.TenantID, ClientID: st.AdminAppID, ClientSecret: secret,
		AuthorityHost: ep.AuthorityURL() + "/", CAFile: caFile, CABundle: caFile, DataDir: dir,
	}
	if err := d.Env.Write(d.EnvFile); err != nil {
		return fmt.Errorf("write %s: %w", d.EnvFile, err)
	}
	return nil
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
