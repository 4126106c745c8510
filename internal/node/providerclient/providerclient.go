// Package providerclient is the client side of the Secrets Store provider
// protocol (sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1): one
// gRPC connection per provider, found as {dir}/{name}.sock in a list of
// directories, and Mount calls whose error codes and Coffer's trailer come
// back as a *ProviderError. Coffer's CSI driver and its sync controller
// both call providers through it.
package providerclient

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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// nameRE is the upstream rule for provider names, which become socket
// file names.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,30}$`)

// ValidName reports whether name is a valid provider name.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// ErrNotFound means no provider socket of that name exists.
var ErrNotFound = errors.New("provider not found")

// Clients keeps one gRPC connection per provider.
type Clients struct {
	dirs    []string
	maxRecv int

	// Dialed, when set, is called once for each new connection; a caller
	// subscribes to the provider's pushes there. Every call through the
	// connection first waits, up to ReadyWait, for the channel it returns
	// to close, so that no mount happens before the provider listens. Set
	// both before the first call.
	Dialed    func(name string, c *grpc.ClientConn) <-chan struct{}
	ReadyWait time.Duration

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	ready map[string]<-chan struct{}
}

// New returns clients for the providers whose sockets are in dirs, which
// accept answers of up to maxRecv bytes.
func New(dirs []string, maxRecv int) *Clients {
	return &Clients{dirs: dirs, maxRecv: maxRecv, conns: map[string]*grpc.ClientConn{}, ready: map[string]<-chan struct{}{}}
}

// Each calls fn with every connection open now.
func (p *Clients) Each(fn func(name string, c *grpc.ClientConn)) {
	p.mu.Lock()
	conns := make(map[string]*grpc.ClientConn, len(p.conns))
	maps.Copy(conns, p.conns)
	p.mu.Unlock()
	for name, c := range conns {
		fn(name, c)
	}
}

// Get returns the client of provider name, dialing {dir}/{name}.sock in the
// first directory that has it.
func (p *Clients) Get(name string) (v1alpha1.CSIDriverProviderClient, error) {
	if !ValidName(name) {
		return nil, fmt.Errorf("provider name %q is invalid: use 1-30 letters, digits, '-' or '_'", name)
	}
	c, ready, err := p.conn(name)
	if err != nil {
		return nil, err
	}
	if ready != nil {
		t := time.NewTimer(p.ReadyWait)
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
func (p *Clients) conn(name string) (*grpc.ClientConn, <-chan struct{}, error) {
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
		if p.Dialed != nil {
			p.ready[name] = p.Dialed(name, c)
		}
		return c, p.ready[name], nil
	}
	return nil, nil, fmt.Errorf("%w: no %s.sock in %v; is the %s provider running on this node?", ErrNotFound, name, p.dirs, name)
}

// Close closes every connection.
func (p *Clients) Close() {
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

// Mount calls the provider's Mount and checks its answer's shape.
func (p *Clients) Mount(ctx context.Context, name string, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	c, err := p.Get(name)
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
