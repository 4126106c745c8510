// Package client is how the coffer CLI talks to a server: the real Azure
// SDK (azsecrets, azkeys, azcertificates over azidentity) for the vault
// data plane, and plain JSON
// for the management API.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/cofferhq/coffer/internal/daemon/httpclient"
	"github.com/cofferhq/coffer/internal/protocol/azerror"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
)

// EnvFileVar names an env file to use instead of ./.coffer/dev.env.
const EnvFileVar = "COFFER_ENV_FILE"

// ErrNoCredentials means no env file or environment gave credentials.
var ErrNoCredentials = errors.New("no credentials: run `coffer dev` in this directory (it writes .coffer/dev.env), or pass --env-file FILE, or set " + EnvFileVar + ", or export AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET and AZURE_AUTHORITY_HOST")

// LoadEnv finds credentials: the explicit file, then $COFFER_ENV_FILE, then
// ./.coffer/dev.env, then the AZURE_* variables of the process.
func LoadEnv(explicit string) (devenv.Env, error) {
	for _, p := range []string{explicit, os.Getenv(EnvFileVar)} {
		if p != "" {
			e, err := devenv.Read(p)
			if err != nil {
				return devenv.Env{}, fmt.Errorf("read credentials: %w", err)
			}
			return e, nil
		}
	}
	if e, err := devenv.Read(devenv.Path(".coffer")); err == nil {
		return e, nil
	}
	e := devenv.Env{
		VaultURL: os.Getenv("COFFER_VAULT_URL"), TenantID: os.Getenv("AZURE_TENANT_ID"),
		ClientID: os.Getenv("AZURE_CLIENT_ID"), ClientSecret: os.Getenv("AZURE_CLIENT_SECRET"),
		AuthorityHost: os.Getenv("AZURE_AUTHORITY_HOST"), CAFile: os.Getenv("SSL_CERT_FILE"),
	}
	if e.TenantID == "" || e.ClientID == "" || e.ClientSecret == "" || e.AuthorityHost == "" {
		return devenv.Env{}, ErrNoCredentials
	}
	return e, nil
}

// Client holds credentials and a transport for one Coffer installation.
type Client struct {
	Env       devenv.Env
	HTTP      *http.Client
	Cred      azcore.TokenCredential
	authority *url.URL
}

// New checks env and builds a client; no network call is made yet.
func New(env devenv.Env) (*Client, error) {
	for name, v := range map[string]string{"AZURE_TENANT_ID": env.TenantID, "AZURE_CLIENT_ID": env.ClientID, "AZURE_CLIENT_SECRET": env.ClientSecret, "AZURE_AUTHORITY_HOST": env.AuthorityHost} {
		if v == "" {
			return nil, fmt.Errorf("credentials lack %s", name)
		}
	}
	u, err := url.Parse(env.AuthorityHost)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("AZURE_AUTHORITY_HOST %q is not an https URL", env.AuthorityHost)
	}
	hc, err := httpclient.New(env.CAFile)
	if err != nil {
		return nil, err
	}
	return NewWithHTTP(env, hc)
}

// NewWithHTTP is New with the HTTP client given (tests that pick which
// server replica to dial use it).
func NewWithHTTP(env devenv.Env, hc *http.Client) (*Client, error) {
	u, err := url.Parse(env.AuthorityHost)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("AZURE_AUTHORITY_HOST %q is not an https URL", env.AuthorityHost)
	}
	cred, err := azidentity.NewClientSecretCredential(env.TenantID, env.ClientID, env.ClientSecret, &azidentity.ClientSecretCredentialOptions{
		ClientOptions:            azcore.ClientOptions{Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: env.AuthorityHost}, Transport: hc},
		DisableInstanceDiscovery: true,
	})
	if err != nil {
		return nil, err
	}
	return &Client{Env: env, HTTP: hc, Cred: cred, authority: u}, nil
}

// VaultURL returns the URL of vault name: a subdomain of the authority host.
func (c *Client) VaultURL(name string) string {
	return "https://" + strings.ToLower(name) + "." + c.authority.Host + "/"
}

// Secrets returns an azsecrets client for a vault.
func (c *Client) Secrets(vaultName string) (*azsecrets.Client, error) {
	if vaultName == "" {
		return nil, errors.New("--vault-name is required")
	}
	return azsecrets.NewClient(c.VaultURL(vaultName), c.Cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: c.HTTP}})
}

// Keys returns an azkeys client for a vault.
func (c *Client) Keys(vaultName string) (*azkeys.Client, error) {
	if vaultName == "" {
		return nil, errors.New("--vault-name is required")
	}
	return azkeys.NewClient(c.VaultURL(vaultName), c.Cred, &azkeys.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: c.HTTP}})
}

// Certificates returns an azcertificates client for a vault.
func (c *Client) Certificates(vaultName string) (*azcertificates.Client, error) {
	if vaultName == "" {
		return nil, errors.New("--vault-name is required")
	}
	return azcertificates.NewClient(c.VaultURL(vaultName), c.Cred, &azcertificates.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: c.HTTP}})
}

// Token returns an access token for a resource.
func (c *Client) Token(ctx context.Context, resource string) (string, error) {
	tok, err := c.Cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}})
	return tok.Token, err
}

// ManagementError is a failed call to the management API, or to a vault
// through Vault.
type ManagementError struct {
	Status  int
	Code    string
	Message string
}

func (e *ManagementError) Error() string { return fmt.Sprintf("(%s) %s", e.Code, e.Message) }

// Manage calls the management API: method on /coffer/v1/{path}, with in as
// the JSON body (if not nil), decoding the answer into out (if not nil).
func (c *Client) Manage(ctx context.Context, method, path string, in, out any) error {
	return c.call(ctx, endpoint.ManagementResource, method, "https://"+c.authority.Host+"/coffer/v1/"+path, in, out)
}

// Vault calls a vault's REST API directly: method on path (with its
// api-version), for Coffer's extensions that the Azure SDK clients drop,
// such as an ACME issuer's acme member.
func (c *Client) Vault(ctx context.Context, vaultName, method, path string, in, out any) error {
	if vaultName == "" {
		return errors.New("--vault-name is required")
	}
	return c.call(ctx, "https://"+c.authority.Host, method, strings.TrimSuffix(c.VaultURL(vaultName), "/")+path, in, out)
}

func (c *Client) call(ctx context.Context, resource, method, url string, in, out any) error {
	tok, err := c.Token(ctx, resource)
	if err != nil {
		return err
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		eb, ok := azerror.Parse(data)
		if !ok || eb.Error.Code == "" {
			return &ManagementError{Status: resp.StatusCode, Code: http.StatusText(resp.StatusCode), Message: strings.TrimSpace(string(data))}
		}
		return &ManagementError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Describe turns an SDK, identity or management error into one line that
// says what failed, the way `az` prints errors.
func Describe(err error) string {
	var re *azcore.ResponseError
	var afe *azidentity.AuthenticationFailedError
	switch {
	case errors.As(err, &re):
		msg := re.ErrorCode
		if re.RawResponse != nil && re.RawResponse.Body != nil {
			if b, rerr := io.ReadAll(io.LimitReader(re.RawResponse.Body, 1<<20)); rerr == nil {
				if eb, ok := azerror.Parse(b); ok && eb.Error.Message != "" {
					code := eb.Error.Code
					if in := eb.Inner(); in != "" {
						code += "/" + in
					}
					return fmt.Sprintf("(%s) %s", code, eb.Error.Message)
				}
			}
		}
		if msg == "" {
			msg = re.RawResponse.Status
		}
		return fmt.Sprintf("(%s) request to %s failed with %d", msg, re.RawResponse.Request.URL.Host, re.StatusCode)
	case errors.As(err, &afe):
		if afe.RawResponse != nil && afe.RawResponse.Body != nil {
			var eb struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
			}
			if b, rerr := io.ReadAll(io.LimitReader(afe.RawResponse.Body, 1<<20)); rerr == nil && json.Unmarshal(b, &eb) == nil && eb.Description != "" {
				// Entra's trailer repeats one ID three ways; keep it once,
				// since it is what finds the refusal in the server's log.
				d, trailer, _ := strings.Cut(eb.Description, " Trace ID: ")
				if id, _, _ := strings.Cut(trailer, " "); id != "" {
					d += " (trace ID " + id + ")"
				}
				return fmt.Sprintf("authentication failed (%s): %s", eb.Error, d)
			}
		}
		return "authentication failed: " + firstLine(afe.Error())
	}
	return firstLine(err.Error())
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}
