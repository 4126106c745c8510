// Package endpoint builds and parses Coffer's public URLs. Vaults live on
// subdomains of a DNS suffix (https://{vault}.{suffix}:{port}/); the
// authority, the management API and the token audience live on the suffix
// itself. The Azure SDK requires that split: a vault's host must end with
// "." + the challenge resource's host.
package endpoint

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// DefaultSuffix is the DNS suffix `coffer dev` uses.
const DefaultSuffix = "vault.localhost"

// ManagementResource is the audience of tokens for the management API. It is
// deliberately not a URL prefix of the vault audience, so a data-plane token
// never passes as a management token.
const ManagementResource = "api://coffer-management"

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Endpoints are the public coordinates of one Coffer installation.
type Endpoints struct {
	Suffix string // DNS suffix, lowercase, no leading dot
	Port   int    // public HTTPS port; 443 is left out of URLs
}

// New validates suffix and port.
func New(suffix string, port int) (Endpoints, error) {
	suffix = strings.ToLower(strings.Trim(suffix, "."))
	labels := strings.Split(suffix, ".")
	if len(labels) < 2 {
		return Endpoints{}, fmt.Errorf("DNS suffix %q must have at least two labels, such as vault.localhost: vaults are its subdomains", suffix)
	}
	for _, l := range labels {
		if !labelRE.MatchString(l) {
			return Endpoints{}, fmt.Errorf("DNS suffix %q has an invalid label %q", suffix, l)
		}
	}
	if port < 1 || port > 65535 {
		return Endpoints{}, fmt.Errorf("public port %d is out of range 1-65535", port)
	}
	return Endpoints{Suffix: suffix, Port: port}, nil
}

func (e Endpoints) hostport(host string) string {
	if e.Port == 443 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(e.Port))
}

// Apex returns the suffix host with its port, such as vault.localhost:8443.
func (e Endpoints) Apex() string { return e.hostport(e.Suffix) }

// AuthorityURL is the authority's base URL, without a trailing slash.
func (e Endpoints) AuthorityURL() string { return "https://" + e.Apex() }

// Resource is the audience of data-plane tokens: the parent of every vault.
func (e Endpoints) Resource() string { return "https://" + e.Apex() }

// VaultBase is a vault's base URL without a trailing slash.
func (e Endpoints) VaultBase(vault string) string {
	var buf [128]byte
	return string(e.AppendVaultBase(buf[:0], vault))
}

// AppendVaultBase appends VaultBase(vault) to b, for callers that build a
// longer URL from it in one allocation: every object's response has an id.
func (e Endpoints) AppendVaultBase(b []byte, vault string) []byte {
	b = append(b, "https://"...)
	b = append(b, strings.ToLower(vault)...)
	b = append(append(b, '.'), e.Suffix...)
	if e.Port != 443 {
		b = strconv.AppendInt(append(b, ':'), int64(e.Port), 10)
	}
	return b
}

// VaultURL is a vault's URL as Azure prints it, with a trailing slash.
func (e Endpoints) VaultURL(vault string) string { return e.VaultBase(vault) + "/" }

// Route says what a request's Host header addresses.
type Route int

// Routes.
const (
	RouteUnknown Route = iota
	RouteApex          // the authority and management API
	RouteVault         // a vault
)

// Parse classifies a Host header. The port is ignored: a proxy or a port
// mapping may change it, and URLs are built from configuration anyway.
func (e Endpoints) Parse(host string) (Route, string) {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.ToLower(strings.TrimSuffix(h, "."))
	switch {
	case h == e.Suffix || h == "localhost":
		return RouteApex, ""
	case len(h) > len(e.Suffix) && h[len(h)-len(e.Suffix)-1] == '.' && strings.HasSuffix(h, e.Suffix):
		// Tested before the IP literal: every vault request comes here,
		// and parsing a host name as an IP allocates its error.
		name := h[:len(h)-len(e.Suffix)-1]
		if name == "" || strings.Contains(name, ".") {
			return RouteUnknown, ""
		}
		return RouteVault, name
	case net.ParseIP(h) != nil:
		return RouteApex, ""
	}
	return RouteUnknown, ""
}
