// Command app is the e2e tests' workload image, built from this module. It
// stands in for the seed walkthroughs' busybox, nginx and azure-cli images,
// which cannot be pulled here. Like busybox, it is one binary under
// several names (/bin/sleep, /bin/cat, ...), so the seeds' pod manifests
// and `kubectl exec` commands work as written:
//
//	sleep SECONDS|inf              sleep (until SIGTERM)
//	cat FILE...                    print files
//	ls DIR                         list a directory's visible names
//	printenv NAME...               print variables
//	curl [-s] [-k] [-H 'K: V']... [--cacert FILE] URL
//	                               GET URL and print the body (no redirects)
//
// Under its own name, /app, it runs one of the tests' own flows and prints
// what it saw, one "key=value" line each, for the tests to read from its
// log; then it sleeps until stopped. With no arguments it only sleeps (a
// server image's entrypoint).
//
//	app workload VAULT SECRET      WorkloadIdentityCredential from the injected env
//	app watch FILE                 print the file whenever it changes
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	name, args := filepath.Base(os.Args[0]), os.Args[1:]
	if name != "app" {
		os.Exit(tool(ctx, name, args))
	}
	if len(args) == 0 {
		<-ctx.Done()
		return
	}
	var err error
	switch args[0] {
	case "workload":
		if len(args) != 3 {
			err = errors.New("usage: app workload VAULT SECRET")
		} else {
			err = workload(ctx, args[1], args[2])
		}
	case "watch":
		if len(args) != 2 {
			err = errors.New("usage: app watch FILE")
		} else {
			watch(ctx, args[1])
		}
	default:
		err = fmt.Errorf("unknown mode %q (workload, watch)", args[0])
	}
	if err != nil {
		report("error", err.Error())
	}
	fmt.Println("done=true")
	<-ctx.Done()
}

// tool is the busybox-like half: the exit status is the command's.
func tool(ctx context.Context, name string, args []string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	switch name {
	case "sleep":
		if len(args) != 1 {
			return fail(errors.New("usage: sleep SECONDS|inf"))
		}
		d := time.Duration(1<<63 - 1)
		if args[0] != "inf" {
			s, err := strconv.ParseFloat(args[0], 64)
			if err != nil || s < 0 {
				return fail(fmt.Errorf("invalid time interval %q", args[0]))
			}
			d = time.Duration(s * float64(time.Second))
		}
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		return 0
	case "cat":
		status := 0
		for _, f := range args {
			b, err := os.ReadFile(f)
			if err != nil {
				status = fail(err)
				continue
			}
			os.Stdout.Write(b)
		}
		return status
	case "ls":
		dir := "."
		if len(args) > 0 {
			dir = args[0]
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fail(err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				fmt.Println(e.Name())
			}
		}
		return 0
	case "printenv":
		status := 0
		for _, n := range args {
			if v, ok := os.LookupEnv(n); ok {
				fmt.Println(v)
			} else {
				status = 1
			}
		}
		return status
	case "curl":
		if err := curl(ctx, args); err != nil {
			return fail(err)
		}
		return 0
	}
	return fail(errors.New("unknown command"))
}

// curl does the part of curl that the seeds use: a GET with headers.
func curl(ctx context.Context, args []string) error {
	var url, caFile string
	insecure := false
	header := http.Header{}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-s" || a == "--silent":
		case a == "-k" || a == "--insecure":
			insecure = true
		case a == "-H" || a == "--header" || a == "--cacert":
			if i+1 == len(args) {
				return fmt.Errorf("option %s needs a value", a)
			}
			i++
			if a == "--cacert" {
				caFile = args[i]
				continue
			}
			k, v, ok := strings.Cut(args[i], ":")
			if !ok {
				return fmt.Errorf("header %q has no colon", args[i])
			}
			header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
		case strings.HasPrefix(a, "-"):
			return fmt.Errorf("option %s is not supported here", a)
		default:
			url = a
		}
	}
	if url == "" {
		return errors.New("no URL given")
	}
	hc, err := httpClient(caFile)
	if err != nil {
		return err
	}
	hc.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify = insecure
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	req.Header = header
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

func report(key, value string) { fmt.Printf("%s=%q\n", key, value) }

// httpClient trusts caFile (when set) on top of the system roots.
func httpClient(caFile string) (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}, nil
}

// workload reads a secret with the Go SDK's WorkloadIdentityCredential,
// configured only by what the webhook injected (and the CA in
// $COFFER_CA_FILE).
func workload(ctx context.Context, vault, secret string) error {
	hc, err := httpClient(os.Getenv("COFFER_CA_FILE"))
	if err != nil {
		return err
	}
	for _, n := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"} {
		report(n, os.Getenv(n))
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
	report(secret, *r.Value)
	return nil
}

// watch prints path's content at start and after each change.
func watch(ctx context.Context, path string) {
	last := "\x00"
	for ctx.Err() == nil {
		b, err := os.ReadFile(path)
		if err == nil && string(b) != last {
			last = string(b)
			report(filepath.Base(path), last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
