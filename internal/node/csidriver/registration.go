package csidriver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/unixsock"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Registration answers the kubelet's plugin watcher, which finds the
// socket in its plugins_registry directory, asks what the plugin is
// (GetInfo), and reports whether it registered it. This is what the
// node-driver-registrar sidecar does for other drivers; serving it from
// the driver removes a container per node, and the kubelet then knows the
// driver exactly while the driver runs.
type Registration struct {
	// Name is the driver's name.
	Name string
	// Endpoint is the driver's CSI socket as the kubelet sees it (a host
	// path such as /var/lib/kubelet/plugins/csi-secrets-store/csi.sock).
	Endpoint string
	Log      *slog.Logger

	mu         sync.Mutex
	registered bool
	lastError  string

	registerapi.UnimplementedRegistrationServer
}

// GetInfo implements the registration service.
func (r *Registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.Name, Endpoint: r.Endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

// NotifyRegistrationStatus implements the registration service.
func (r *Registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	r.mu.Lock()
	r.registered, r.lastError = s.PluginRegistered, s.Error
	r.mu.Unlock()
	if s.PluginRegistered {
		r.Log.Info("registered with the kubelet", "driver", r.Name, "endpoint", r.Endpoint)
	} else {
		r.Log.Error("the kubelet refused the driver's registration", "driver", r.Name, "endpoint", r.Endpoint, "error", s.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Healthy reports an error once the kubelet refused the registration;
// before the kubelet has answered, the driver counts as healthy.
func (r *Registration) Healthy() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.registered && r.lastError != "" {
		return fmt.Errorf("the kubelet refused the registration: %s", r.lastError)
	}
	return nil
}

// Registered reports whether the kubelet said it registered the driver.
func (r *Registration) Registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

// RegistrationSocket is the socket's conventional path under the kubelet's
// plugins_registry directory.
func RegistrationSocket(dir, name string) string {
	return filepath.Join(dir, name+"-reg.sock")
}

// ServeRegistration serves r on socket (unix:///path or a path) until ctx
// ends, and removes the socket then, so the kubelet deregisters the
// driver.
func (r *Registration) ServeRegistration(ctx context.Context, socket string) error {
	if r.Name == "" || !filepath.IsAbs(r.Endpoint) {
		return daemon.Invalid("RegistrationPath", "%q must be the CSI socket's absolute path on the host, as the kubelet sees it", r.Endpoint)
	}
	if r.Log == nil {
		r.Log = slog.Default()
	}
	if !strings.HasPrefix(socket, "unix://") {
		socket = "unix://" + socket
	}
	ln, err := unixsock.Listen(socket, 0)
	if err != nil {
		return fmt.Errorf("registration socket: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, r)
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
