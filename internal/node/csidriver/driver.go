// Package csidriver is a Secrets Store CSI driver, a drop-in for
// secrets-store.csi.k8s.io: the CSI Identity and Node services on a unix
// socket, which mount a tmpfs per pod volume, ask a provider (over the
// upstream v1alpha1 gRPC protocol) for the files, write them atomically,
// record a SecretProviderClassPodStatus and sync Kubernetes Secrets.
package csidriver

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/cofferhq/coffer/internal/version"

	"github.com/cofferhq/coffer/internal/daemon"
	"github.com/cofferhq/coffer/internal/node/providerclient"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/record"
	"k8s.io/mount-utils"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Name is the CSI driver name the upstream driver registers.
const Name = "secrets-store.csi.k8s.io"

// Settings are how a driver behaves. Config (the driver's core) and
// Options (the daemon around it) both hold them.
type Settings struct {
	// Name is the CSI driver name (default Name).
	Name string
	// NodeID names this node (NodeGetInfo, the SPCPS node label).
	NodeID string
	// Endpoint is where the CSI services listen, such as unix:///csi/csi.sock.
	Endpoint string
	// ProviderDirs hold provider sockets, {dir}/{provider}.sock.
	ProviderDirs []string
	// MaxCallRecvMsgSize bounds a provider's response, in bytes.
	MaxCallRecvMsgSize int
	// RotationEnabled refreshes each mounted volume from its provider once
	// per RotationInterval: on the kubelet's republishes, and between them
	// on the driver's own, with the kubelet's last request for the volume.
	RotationEnabled  bool
	RotationInterval time.Duration
	// RotationTick is how often the driver looks for volumes due for
	// rotation between the kubelet's republishes. Zero picks a quarter of
	// RotationInterval, within 250 ms and 10 s; a negative tick leaves
	// rotation to the kubelet's republishes alone.
	RotationTick time.Duration
	// Push refreshes a volume as soon as its provider reports that one of
	// its objects changed in the vault (Coffer's provider does, through its
	// Push service), besides every RotationInterval. It needs
	// RotationEnabled.
	Push bool
	// ProviderTimeout bounds one provider call.
	ProviderTimeout time.Duration
}

// Config configures a driver's core.
type Config struct {
	Settings

	// Kube reads SecretProviderClasses and writes statuses and Secrets; a
	// driver without it refuses to publish (as in csi-sanity).
	Kube client.Client
	// Reader, when set, serves SecretProviderClass reads from a watch
	// cache; a miss falls back to Kube, so a class created a moment ago is
	// still found.
	Reader   client.Reader
	Recorder record.EventRecorder
	Mounter  mount.Interface
	Metrics  *Metrics
	Log      *slog.Logger
	Now      func() time.Time
}

// resyncInterval is how often a republish checks synced Secrets whose
// objects did not change, as the upstream driver's status controller does.
const resyncInterval = 5 * time.Minute

// Driver is a running Secrets Store CSI driver.
type Driver struct {
	cfg       Config
	providers *providerclient.Clients

	recorder *recorder

	// mu guards volumes and the state of every volume in it; see volume
	// for what each lock guards and the lock order.
	mu      sync.Mutex
	volumes map[string]*volume // by target path

	pushes     chan string // volumes pushed by providers, for the rotation loop
	pushCtx    context.Context
	pushCancel context.CancelFunc
	pushWG     sync.WaitGroup
}

// New validates cfg and returns a driver.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = Name
	}
	if cfg.NodeID == "" {
		return nil, daemon.Invalid("NodeID", "is required: it names this node in statuses and NodeGetInfo")
	}
	if len(cfg.ProviderDirs) == 0 {
		return nil, daemon.Invalid("ProviderDirs", "is required: the directories holding provider sockets")
	}
	if cfg.MaxCallRecvMsgSize <= 0 {
		cfg.MaxCallRecvMsgSize = 4 << 20
	}
	if cfg.RotationInterval <= 0 {
		cfg.RotationInterval = 2 * time.Minute
	}
	if cfg.RotationTick == 0 {
		cfg.RotationTick = min(max(cfg.RotationInterval/4, 250*time.Millisecond), 10*time.Second)
	}
	if cfg.ProviderTimeout <= 0 {
		cfg.ProviderTimeout = 30 * time.Second
	}
	if cfg.Mounter == nil {
		cfg.Mounter = NewMounter()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	d := &Driver{cfg: cfg, providers: providerclient.New(cfg.ProviderDirs, cfg.MaxCallRecvMsgSize),
		recorder: newRecorder(), volumes: map[string]*volume{}, pushes: make(chan string, 1024)}
	d.pushCtx, d.pushCancel = context.WithCancel(context.Background())
	if cfg.Push && cfg.RotationEnabled {
		d.providers.Dialed, d.providers.ReadyWait = d.subscribe, pushReady
	}
	return d, nil
}

// Serve serves the CSI services on ln until ctx ends.
func (d *Driver) Serve(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	csi.RegisterIdentityServer(srv, identity{d: d})
	csi.RegisterNodeServer(srv, node{d: d})
	csi.RegisterControllerServer(srv, controller{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	rctx, stopRecorder := context.WithCancel(context.Background())
	recorded := make(chan struct{})
	go func() {
		defer close(recorded)
		d.runRecorder(rctx)
	}()
	rotated := make(chan struct{})
	go func() {
		defer close(rotated)
		if d.cfg.RotationEnabled && (d.cfg.RotationTick > 0 || d.providers.Dialed != nil) {
			d.rotate(rctx)
		}
	}()
	defer func() {
		stopRecorder()
		<-rotated
		<-recorded
		d.pushCancel()
		d.pushWG.Wait()
		d.providers.Close()
	}()
	select {
	case <-ctx.Done():
		srv.GracefulStop()
		return nil
	case err := <-errc:
		return err
	}
}

// Settle waits until the bookkeeping of every publish so far (status
// objects, synced Secrets) is done or given up.
func (d *Driver) Settle() { d.recorder.Wait() }

// logCalls logs each CSI call once, with its outcome; requests carry
// secrets (nodePublishSecretRef, tokens), so only the method is logged.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	level := slog.LevelDebug
	if err != nil {
		level = slog.LevelWarn
	}
	d.cfg.Log.Log(ctx, level, "csi call", "method", info.FullMethod, "code", status.Code(err).String(), "ms", time.Since(start).Milliseconds(), "err", err)
	return resp, err
}

// identity is the CSI Identity service.
type identity struct {
	csi.UnimplementedIdentityServer
	d *Driver
}

func (i identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: i.d.cfg.Name, VendorVersion: version.Version}, nil
}

// GetPluginCapabilities advertises nothing: the driver has no Controller
// service worth the name (ephemeral volumes are never created or attached).
func (i identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (i identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// controller answers the Controller service with no capabilities, as the
// upstream driver does: kubelet never calls it, but CSI tooling (and
// csi-sanity) asks what it offers.
type controller struct {
	csi.UnimplementedControllerServer
}

// ControllerGetCapabilities answers one UNKNOWN capability: an empty list
// reads as "no answer" to CSI clients.
func (controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_UNKNOWN}},
	}}}, nil
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
