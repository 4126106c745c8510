package csidriver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"
)

// providerNameRE is the upstream rule for provider names, which become
// socket file names.
var providerNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,30}$`)

// ErrProviderNotFound means no provider socket of that name exists.
var ErrProviderNotFound = errors.New("provider not found")

// providerClients keeps one gRPC connection per provider.
type providerClients struct {
	dirs    []string
	maxRecv int

	// dialed, when set, is called once for each new connection; the driver
	// subscribes to the provider's pushes there. Every call through the
	// connection first waits, up to readyWait, for the channel it returns
	// to close, so that no mount happens before the provider listens.
	dialed    func(name string, c *grpc.ClientConn) <-chan struct{}
	readyWait time.Duration

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	ready map[string]<-chan struct{}
}

func newProviderClients(dirs []string, maxRecv int) *providerClients {
	return &providerClients{dirs: dirs, maxRecv: maxRecv, conns: map[string]*grpc.ClientConn{}, ready: map[string]<-chan struct{}{}}
}

// each calls fn with every connection open now.
func (p *providerClients) each(fn func(name string, c *grpc.ClientConn)) {
	p.mu.Lock()
	conns := make(map[string]*grpc.ClientConn, len(p.conns))
	maps.Copy(conns, p.conns)
	p.mu.Unlock()
	for name, c := range conns {
		fn(name, c)
	}
}

// get returns the client of provider name, dialing {dir}/{name}.sock in the
// first directory that has it.
func (p *providerClients) get(name string) (v1alpha1.CSIDriverProviderClient, error) {
	if !providerNameRE.MatchString(name) {
		return nil, fmt.Errorf("provider name %q is invalid: use 1-30 letters, digits, '-' or '_'", name)
	}
	c, ready, err := p.conn(name)
	if err != nil {
		return nil, err
	}
	if ready != nil {
		t := time.NewTimer(p.readyWait)
		select {
		case <-ready:
		case <-t.C:
		}
		t.Stop()
	}
	return v1alpha1.NewCSIDriverProviderClient(c), nil
}

// conn returns the connection to provider name, and what its calls wait
// for (nil: nothing).
func (p *providerClients) conn(name string) (*grpc.ClientConn, <-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[name]; ok {
		return c, p.ready[name], nil
	}
	for _, dir := range p.dirs {
		sock := filepath.Join(dir, name+".sock")
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		c, err := grpc.NewClient("unix:"+sock,
			grpc.WithTransportCredentials(insecure.NewCredentials()), // a local socket, guarded by file permissions
			grpc.WithAuthority("localhost"),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(p.maxRecv)))
		if err != nil {
			return nil, nil, err
		}
		p.conns[name] = c
		if p.dialed != nil {
			p.ready[name] = p.dialed(name, c)
		}
		return c, p.ready[name], nil
	}
	return nil, nil, fmt.Errorf("%w: no %s.sock in %v; is the %s provider running on this node?", ErrProviderNotFound, name, p.dirs, name)
}

func (p *providerClients) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, c := range p.conns {
		c.Close()
		delete(p.conns, name)
	}
}

// ProviderError is a Mount answered with an error code.
type ProviderError struct {
	Provider string
	Code     string // the provider's code, such as Forbidden
	Detail   string // Coffer's provider explains itself in a trailer
}

func (e *ProviderError) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("provider %s: %s: %s", e.Provider, e.Code, e.Detail)
	}
	return fmt.Sprintf("provider %s failed with error code %s", e.Provider, e.Code)
}

// mount calls the provider's Mount and checks its answer's shape.
func (p *providerClients) mount(ctx context.Context, name string, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	c, err := p.get(name)
	if err != nil {
		return nil, err
	}
	var trailer metadata.MD
	resp, err := c.Mount(ctx, req, grpc.Trailer(&trailer))
	if err != nil {
		return nil, fmt.Errorf("provider %s: %w", name, err)
	}
	if code := resp.GetError().GetCode(); code != "" {
		pe := &ProviderError{Provider: name, Code: code}
		if v := trailer.Get(mounterr.Trailer); len(v) > 0 {
			pe.Detail = v[0]
		}
		return nil, pe
	}
	if resp.GetObjectVersion() == nil {
		return nil, fmt.Errorf("provider %s returned no object versions", name)
	}
	return resp, nil
}
