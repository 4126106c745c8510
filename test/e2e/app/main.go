// Command app is the e2e tests' workload: it does what the seed
// walkthroughs' containers do (read mounted files, read an env var, ask
// IMDS for a token and call the vault's REST API, use the Go SDK with
// workload identity, watch a file change) and prints what it saw, one
// "key=value" line each, for the tests to read from the container's log.
// Then it sleeps, so the pod stays Running, until it is stopped.
//
//	app files DIR NAME...          print each file's content
//	app env NAME...                print each variable
//	app imds RESOURCE VAULT SECRET the IMDS flow of seed 002, then GET the secret
//	app workload VAULT SECRET      WorkloadIdentityCredential from the injected env
//	app watch FILE                 print the file whenever it changes
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app files|env|imds|workload|watch ...")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "files":
		for _, n := range args[1:] {
			b, rerr := os.ReadFile(filepath.Join(args[0], n))
			report(n, string(b), rerr)
		}
	case "env":
		for _, n := range args {
			report(n, os.Getenv(n), nil)
		}
	case "imds":
		err = imds(ctx, args[0], args[1], args[2])
	case "workload":
		err = workload(ctx, args[0], args[1])
	case "watch":
		watch(ctx, args[0])
	default:
		err = fmt.Errorf("unknown mode %s", os.Args[1])
	}
	if err != nil {
		report("error", err.Error(), nil)
	}
	fmt.Println("done=true")
	<-ctx.Done()
}

func report(key, value string, err error) {
	if err != nil {
		fmt.Printf("%s.error=%q\n", key, err.Error())
		return
	}
	fmt.Printf("%s=%q\n", key, value)
}

// httpClient trusts the Coffer CA mounted at $COFFER_CA_FILE.
func httpClient() (*http.Client, error) {
	pool := x509.NewCertPool()
	if f := os.Getenv("COFFER_CA_FILE"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pool.AppendCertsFromPEM(b)
	}
	// *.localhost is loopback (RFC 6761), which not every resolver knows.
	d := &net.Dialer{Timeout: 10 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if host, port, err := net.SplitHostPort(addr); err == nil && (host == "localhost" || strings.HasSuffix(host, ".localhost")) {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}, nil
}

// imds does what seed 002 does with curl: a token from IMDS, then the
// secret from the vault's REST API. The pod's service-account token goes
// along, as the node agent's default mode asks.
func imds(ctx context.Context, resource, vault, secret string) error {
	// IMDS_ENDPOINT lets a test point at an agent that does not own
	// 169.254.169.254.
	endpoint := os.Getenv("IMDS_ENDPOINT")
	if endpoint == "" {
		endpoint = "http://169.254.169.254"
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", endpoint+"/metadata/identity/oauth2/token?api-version=2018-02-01&resource="+url.QueryEscape(resource), nil)
	req.Header.Set("Metadata", "true")
	if tok, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	var tok map[string]string
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := json.Unmarshal(body, &tok); err != nil || tok["access_token"] == "" {
		return fmt.Errorf("IMDS answered %d: %s", resp.StatusCode, body)
	}
	report("imds.status", fmt.Sprint(resp.StatusCode), nil)
	hc, err := httpClient()
	if err != nil {
		return err
	}
	req, _ = http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(vault, "/")+"/secrets/"+secret+"?api-version=7.4", nil)
	req.Header.Set("Authorization", "Bearer "+tok["access_token"])
	resp, err = hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct {
		Value string `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("the vault answered %d", resp.StatusCode)
	}
	report(secret, out.Value, nil)
	return nil
}

// workload reads a secret with the Go SDK's WorkloadIdentityCredential,
// configured only by what the webhook injected.
func workload(ctx context.Context, vault, secret string) error {
	hc, err := httpClient()
	if err != nil {
		return err
	}
	for _, n := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"} {
		report(n, os.Getenv(n), nil)
	}
	cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientOptions: azcore.ClientOptions{Transport: hc}, DisableInstanceDiscovery: true})
	if err != nil {
		return err
	}
	c, err := azsecrets.NewClient(vault, cred, &azsecrets.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: hc}})
	if err != nil {
		return err
	}
	r, err := c.GetSecret(ctx, secret, "", nil)
	if err != nil {
		return err
	}
	report(secret, *r.Value, nil)
	return nil
}

// watch prints path's content at start and after each change.
func watch(ctx context.Context, path string) {
	last := "\x00"
	for ctx.Err() == nil {
		b, err := os.ReadFile(path)
		if err == nil && string(b) != last {
			last = string(b)
			report(filepath.Base(path), last, nil)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
