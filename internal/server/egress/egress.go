// Package egress guards the requests the server makes to URLs its users
// give it: event subscription endpoints, ACME directories and DNS hooks.
// A vault user must not be able to point the server at its own network
// (a metadata service, an etcd member, the loopback admin port), so such
// URLs must be HTTPS, and every connection is checked when it is dialed,
// after name resolution, so a name that resolves to a private address,
// or starts to, is refused too.
package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// ErrRefused matches every refused URL or connection.
var ErrRefused = errors.New("outbound endpoint refused")

// Policy says where the server may connect.
type Policy struct {
	// AllowPrivate lets endpoints be loopback, link-local, private or
	// otherwise internal addresses: for an installation whose receivers
	// and CA live on its own network, and for tests.
	AllowPrivate bool
	// Setting names what allows internal addresses, for the refusals'
	// errors: the flag, or the flag and chart value, an operator would
	// set. Empty, it is the server's --allow-private-endpoints.
	Setting string
	// Roots verify the endpoints' TLS certificates; nil is the system pool.
	Roots *x509.CertPool
}

// CheckURL parses raw and checks that it is an absolute https URL without
// credentials, whose host, if it is an address, is allowed. Names are
// checked again when dialed.
func (p Policy) CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("%w: %q is not an absolute URL", ErrRefused, raw)
	}
	if !strings.EqualFold(u.Scheme, "https") {
		return nil, fmt.Errorf("%w: %q is not https: events, ACME directories and hooks are reached over TLS only", ErrRefused, raw)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: %q has credentials in it; give them in their own fields", ErrRefused, raw)
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil {
		if !p.AllowPrivate && Internal(ip) {
			return nil, fmt.Errorf("%w: %s is an internal address (loopback, link-local or private); an operator can allow these with %s", ErrRefused, host, p.setting())
		}
	} else if !p.AllowPrivate && (strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost")) {
		return nil, fmt.Errorf("%w: %s names this machine; an operator can allow it with %s", ErrRefused, host, p.setting())
	}
	return u, nil
}

// Internal reports whether ip is not a public unicast address: loopback,
// private (RFC 1918, RFC 4193), link-local, shared (RFC 6598),
// unspecified, multicast or broadcast.
func Internal(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() ||
		cgnat.Contains(ip) || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

func (p Policy) setting() string {
	if p.Setting == "" {
		return "coffer server --allow-private-endpoints"
	}
	return p.Setting
}

// control refuses a connection to an internal address, after resolution.
func (p Policy) control(_, address string, _ syscall.RawConn) error {
	if p.AllowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dialed address %q", ErrRefused, address)
	}
	if Internal(ap.Addr()) {
		return fmt.Errorf("%w: %s is an internal address (loopback, link-local or private); an operator can allow these with %s", ErrRefused, ap.Addr(), p.setting())
	}
	return nil
}

// Client returns an HTTP client that dials only allowed addresses, verifies
// TLS with the policy's roots, follows no redirects (a redirect could lead
// anywhere), and gives up after timeout.
func (p Policy) Client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, Control: p.control}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSClientConfig:       &tls.Config{RootCAs: p.Roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   2,
			IdleConnTimeout:       time.Minute,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
