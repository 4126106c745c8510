package csidriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
	"unique"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/mount-utils"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/atomicdir"
	"github.com/cofferhq/coffer/internal/node/providerclient"
	"github.com/cofferhq/coffer/internal/protocol/mounterr"
)

// Volume-context keys kubelet sets (podInfoOnMount, tokenRequests) and the
// one the pod's volume sets.
const (
	ctxSPC         = "secretProviderClass"
	ctxPodName     = "csi.storage.k8s.io/pod.name"
	ctxPodNS       = "csi.storage.k8s.io/pod.namespace"
	ctxPodUID      = "csi.storage.k8s.io/pod.uid"
	ctxSAName      = "csi.storage.k8s.io/serviceAccount.name"
	ctxSATokens    = "csi.storage.k8s.io/serviceAccount.tokens"
	filePermission = 0o644
)

// node is the CSI Node service.
type node struct {
	csi.UnimplementedNodeServer
	d *Driver
}

// publication is one validated NodePublishVolume request: what the driver
// needs of it, not the request itself, since a published volume keeps its
// newest one (see volume.req).
type publication struct {
	target                 string
	spcName                string
	podName, podNS, podUID string
	serviceAccount         string
	// What the provider is called with. context is the volume context,
	// and secrets the nodePublishSecretRef data, both without the
	// service-account tokens; tokens are those (from the secrets when
	// kubelet put them there, else from the context), and hasTokens says
	// whether kubelet sent any. A published volume keeps them only while
	// rotation may call the provider between the kubelet's republishes
	// (see withoutCall).
	context, secrets map[string]string
	tokens           string
	hasTokens        bool
}

// newPublication copies what the driver keeps of a request. Every
// request's volume context has the same keys, and most of its values
// repeat across a node's volumes (namespace, class, service account):
// they are interned, so a thousand volumes keep one copy of each rather
// than a thousand.
func newPublication(req *csi.NodePublishVolumeRequest) *publication {
	vc := req.GetVolumeContext()
	p := &publication{target: req.GetTargetPath(), spcName: intern(vc[ctxSPC]),
		podName: vc[ctxPodName], podNS: intern(vc[ctxPodNS]), podUID: vc[ctxPodUID], serviceAccount: intern(vc[ctxSAName])}
	p.context = make(map[string]string, len(vc))
	for k, v := range vc {
		switch k {
		case ctxSATokens:
			p.tokens, p.hasTokens = v, true
		case ctxPodName, ctxPodUID:
			p.context[intern(k)] = v // one per pod: interning would only add an entry
		default:
			p.context[intern(k)] = intern(v)
		}
	}
	for k, v := range req.GetSecrets() {
		if k == ctxSATokens {
			p.tokens, p.hasTokens = v, true // the secrets' tokens win over the context's
			continue
		}
		if p.secrets == nil {
			p.secrets = make(map[string]string, len(req.GetSecrets()))
		}
		p.secrets[intern(k)] = v
	}
	return p
}

// intern returns the process's one copy of s.
func intern(s string) string { return unique.Make(s).Value() }

// withoutCall returns p without what calling the provider takes (the
// volume context, the secrets, the tokens), for a volume that keeps its
// request only to know that it is published: with rotation off, only the
// kubelet's next request calls the provider again, with its own.
func (p *publication) withoutCall() *publication {
	c := *p
	c.context, c.secrets, c.tokens, c.hasTokens = nil, nil, "", false
	return &c
}

func (p *publication) pod() *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: p.podNS, Name: p.podName, UID: types.UID(p.podUID)}
}

// parsePublish checks a request's fields, in the upstream driver's order
// and with its messages.
func parsePublish(req *csi.NodePublishVolumeRequest) (*publication, error) {
	switch {
	case req.GetVolumeCapability() == nil:
		return nil, invalid("Volume capability missing in request")
	case req.GetVolumeId() == "":
		return nil, invalid("Volume ID missing in request")
	case req.GetTargetPath() == "":
		return nil, invalid("Target path missing in request")
	case len(req.GetVolumeContext()) == 0:
		return nil, invalid("Volume attributes missing in request")
	case !req.GetReadonly():
		return nil, invalid("Readonly is not true in request: secrets-store volumes are read-only (set readOnly: true on the pod's csi volume)")
	}
	p := newPublication(req)
	if p.spcName == "" {
		return nil, invalid("secretProviderClass is not set in the volume attributes: give it in the pod's csi.volumeAttributes")
	}
	if p.podName == "" || p.podNS == "" || p.podUID == "" {
		return nil, invalid("the pod's name, namespace and uid are missing from the volume attributes: the CSIDriver object %s must set podInfoOnMount: true", Name)
	}
	if !filepath.IsAbs(p.target) {
		return nil, invalid("target path %q is not absolute", p.target)
	}
	return p, nil
}

// NodePublishVolume mounts a pod's secrets, or, on a kubelet republish of
// a mounted volume, refreshes them when rotation is on and due.
func (n node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	d := n.d
	start := time.Now()
	p, err := parsePublish(req)
	if err != nil {
		d.cfg.Metrics.publishFailed("", ReasonInvalidArgument, time.Since(start).Seconds())
		return nil, err
	}
	v, unlock := d.volumeLock(p.target)
	defer unlock()
	mounted, err := d.ensureMountPoint(p.target)
	if err != nil {
		d.cfg.Metrics.publishFailed("", ReasonEnsureMountPoint, time.Since(start).Seconds())
		return nil, status.Errorf(codes.Internal, "failed to check if target path %s is a mount point: %v", p.target, err)
	}
	if mounted {
		// The newest request carries the freshest tokens, for rotations
		// between the kubelet's republishes.
		d.remember(v, p)
		if !d.cfg.RotationEnabled || !d.due(v) {
			return &csi.NodePublishVolumeResponse{}, nil
		}
		d.republish(ctx, v, p, start)
		return &csi.NodePublishVolumeResponse{}, nil
	}
	provider, files, reason, err := d.firstPublish(ctx, v, p)
	if err != nil {
		d.cfg.Metrics.publishFailed(provider, reason, time.Since(start).Seconds())
		d.event(p, corev1.EventTypeWarning, reason, "Mounting secrets from SecretProviderClass %s/%s failed: %v", p.podNS, p.spcName, err)
		if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
			return nil, err
		}
		return nil, status.Errorf(codes.Internal, "failed to mount secrets store objects for pod %s/%s: %v", p.podNS, p.podName, err)
	}
	d.cfg.Metrics.published(provider, time.Since(start).Seconds(), files)
	return &csi.NodePublishVolumeResponse{}, nil
}

// ensureMountPoint reports whether target is already mounted, creating it
// when it does not exist. A mount point that cannot be read (its backing
// gone) is unmounted and reported as not mounted, so it is mounted afresh.
func (d *Driver) ensureMountPoint(target string) (bool, error) {
	notMnt, err := d.cfg.Mounter.IsLikelyNotMountPoint(target)
	if errors.Is(err, fs.ErrNotExist) {
		return false, os.MkdirAll(target, 0o750)
	}
	if err != nil {
		return false, err
	}
	if notMnt {
		return false, nil
	}
	if _, err := os.ReadDir(target); err != nil {
		if uerr := d.cfg.Mounter.Unmount(target); uerr != nil {
			return false, fmt.Errorf("target %s is an unreadable mount (%v) and unmounting it failed: %w", target, err, uerr)
		}
		return false, nil
	}
	return true, nil
}

// firstPublish mounts a tmpfs at the target and fills it. On any failure
// it unmounts, so kubelet's retry starts from scratch and no empty mount
// is left behind. On success the volume is published.
func (d *Driver) firstPublish(ctx context.Context, v *volume, p *publication) (provider string, written int, reason string, err error) {
	spc, err := d.secretProviderClass(ctx, p)
	if err != nil {
		return "", 0, ReasonSPCNotFound, err
	}
	provider = string(spc.Spec.Provider)
	if err := d.cfg.Mounter.Mount("tmpfs", p.target, "tmpfs", nil); err != nil {
		return provider, 0, ReasonFailedToMount, fmt.Errorf("mount tmpfs at %s: %w", p.target, err)
	}
	files, versions, reason, err := d.fill(ctx, p, spc, nil)
	if err != nil {
		if uerr := mount.CleanupMountPoint(p.target, d.cfg.Mounter, false); uerr != nil {
			d.cfg.Log.Error("unmount after a failed publish", "target", p.target, "err", uerr)
		}
		return provider, 0, reason, err
	}
	d.filledFirst(v, p, provider, versions)
	d.recorder.enqueue(&bookkeeping{p: p, spc: spc, versions: versions, files: files, writeStatus: true, sync: true})
	return provider, len(files), "", nil
}

// republish refreshes a mounted volume. A failure keeps the old files (the
// atomic writer swaps only complete generations) and is reported as an
// event, not as an error: kubelet treats a failed republish of a running
// pod's volume as a failed mount (kubernetes#121271).
func (d *Driver) republish(ctx context.Context, v *volume, p *publication, start time.Time) {
	spc, err := d.secretProviderClass(ctx, p)
	if err != nil {
		d.cfg.Metrics.rotationFailed("", ReasonSPCNotFound)
		d.event(p, corev1.EventTypeWarning, "MountRotationFailed", "Refreshing secrets from SecretProviderClass %s/%s failed; the old files stay: %v", p.podNS, p.spcName, err)
		return
	}
	provider := string(spc.Spec.Provider)
	current, known := d.mountedVersions(v)
	if !known { // the driver restarted since the first publish
		var err error
		if current, err = d.currentVersions(ctx, p); err != nil {
			d.cfg.Log.Warn("no recorded object versions; the provider will compare against none", "target", p.target, "err", err)
		}
	}
	files, versions, reason, err := d.fill(ctx, p, spc, current)
	if err != nil {
		d.cfg.Metrics.rotationFailed(provider, reason)
		d.event(p, corev1.EventTypeWarning, "MountRotationFailed", "Refreshing secrets from SecretProviderClass %s/%s failed; the old files stay: %v", p.podNS, p.spcName, err)
		return
	}
	changed := !sameVersions(current, versions)
	sync := d.refilled(v, provider, versions, changed || !known)
	if changed {
		d.event(p, corev1.EventTypeNormal, "MountRotationComplete", "Rotated the mounted contents of SecretProviderClass %s/%s", p.podNS, p.spcName)
	}
	if changed || !known || sync {
		d.recorder.enqueue(&bookkeeping{p: p, spc: spc, versions: versions, files: files, writeStatus: changed || !known, sync: sync, rotation: true})
	}
	d.cfg.Metrics.rotated(provider, changed, time.Since(start).Seconds())
}

func sameVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// secretProviderClass reads the pod's SPC from the pod's own namespace: a
// pod can never use another namespace's class.
func (d *Driver) secretProviderClass(ctx context.Context, p *publication) (*secretsstorev1.SecretProviderClass, error) {
	if d.cfg.Kube == nil {
		return nil, status.Error(codes.FailedPrecondition, "the driver has no Kubernetes client, so it cannot read SecretProviderClasses")
	}
	spc := &secretsstorev1.SecretProviderClass{}
	key := types.NamespacedName{Namespace: p.podNS, Name: p.spcName}
	if d.cfg.Reader == nil || d.cfg.Reader.Get(ctx, key, spc) != nil {
		if err := d.cfg.Kube.Get(ctx, key, spc); err != nil {
			return nil, fmt.Errorf("failed to get SecretProviderClass %s/%s (it must be in the pod's namespace): %w", p.podNS, p.spcName, err)
		}
	}
	if string(spc.Spec.Provider) == "" {
		return nil, fmt.Errorf("SecretProviderClass %s/%s has no spec.provider", p.podNS, p.spcName)
	}
	if len(spc.Spec.Parameters) == 0 {
		return nil, fmt.Errorf("SecretProviderClass %s/%s has no spec.parameters", p.podNS, p.spcName)
	}
	return spc, nil
}

// attributes are what the provider receives: the SPC's parameters, every
// volume attribute kubelet sent over them, and the service-account tokens
// (from the request's secrets when kubelet puts them there, else from the
// volume context).
func attributes(spc *secretsstorev1.SecretProviderClass, p *publication) map[string]string {
	out := make(map[string]string, len(spc.Spec.Parameters)+len(p.context)+1)
	for k, v := range spc.Spec.Parameters {
		out[k] = v
	}
	for k, v := range p.context {
		out[k] = v
	}
	if p.hasTokens {
		out[ctxSATokens] = p.tokens
	}
	return out
}

// fill asks the provider for the volume's files and writes them. It
// returns the files, the object versions, and on failure the upstream
// error_type.
func (d *Driver) fill(ctx context.Context, p *publication, spc *secretsstorev1.SecretProviderClass, current map[string]string) ([]atomicdir.File, map[string]string, string, error) {
	attrs, _ := json.Marshal(attributes(spc, p))
	secrets, _ := json.Marshal(p.secrets)
	perm, _ := json.Marshal(filePermission)
	req := &v1alpha1.MountRequest{Attributes: string(attrs), Secrets: string(secrets), TargetPath: p.target, Permission: string(perm)}
	for id, v := range current {
		req.CurrentObjectVersion = append(req.CurrentObjectVersion, &v1alpha1.ObjectVersion{Id: id, Version: v})
	}
	cctx, cancel := context.WithTimeout(ctx, d.cfg.ProviderTimeout)
	defer cancel()
	resp, err := d.providers.Mount(cctx, string(spc.Spec.Provider), req)
	if err != nil {
		var pe *providerclient.ProviderError
		switch {
		case errors.As(err, &pe):
			return nil, nil, string(mounterr.Known(pe.Code)), err
		case errors.Is(err, providerclient.ErrNotFound):
			return nil, nil, ReasonProviderLookup, err
		case status.Code(err) == codes.ResourceExhausted:
			return nil, nil, ReasonGRPCProviderError, fmt.Errorf("%w (the response exceeds --max-call-recv-msg-size=%d bytes: mount fewer or smaller objects, or raise the limit)", err, d.cfg.MaxCallRecvMsgSize)
		}
		return nil, nil, ReasonGRPCProviderError, err
	}
	files := make([]atomicdir.File, len(resp.GetFiles()))
	for i, f := range resp.GetFiles() {
		if f.GetMode() < 0 || f.GetMode() > 0o777 {
			return nil, nil, ReasonFileWriteError, fmt.Errorf("provider %s returned file %q with mode %d, outside 0-511", string(spc.Spec.Provider), f.GetPath(), f.GetMode())
		}
		files[i] = atomicdir.File{Path: f.GetPath(), Mode: fs.FileMode(f.GetMode()), Contents: f.GetContents()}
	}
	if len(files) > 0 {
		if _, err := atomicdir.Write(p.target, files); err != nil {
			return nil, nil, ReasonFileWriteError, fmt.Errorf("writing the files at %s: %w", p.target, err)
		}
	}
	// A volume keeps its versions until it is unpublished, and volumes of
	// one class hold the same objects, mostly at the same versions.
	versions := make(map[string]string, len(resp.GetObjectVersion()))
	for _, ov := range resp.GetObjectVersion() {
		versions[intern(ov.GetId())] = intern(ov.GetVersion())
	}
	return files, versions, "", nil
}

// NodeUnpublishVolume removes a pod's files and unmounts its tmpfs.
func (n node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (resp *csi.NodeUnpublishVolumeResponse, err error) {
	d := n.d
	defer func() { d.cfg.Metrics.unpublished(err) }()
	switch {
	case req.GetVolumeId() == "":
		return nil, invalid("Volume ID missing in request")
	case req.GetTargetPath() == "":
		return nil, invalid("Target path missing in request")
	}
	target := req.GetTargetPath()
	v, unlock := d.volumeLock(target)
	defer unlock()
	// Remove the files first, so nothing is left readable if the unmount
	// fails and kubelet retries later.
	entries, _ := filepath.Glob(filepath.Join(target, "*"))
	dotted, _ := filepath.Glob(filepath.Join(target, "..*"))
	for _, e := range append(entries, dotted...) {
		if rerr := os.RemoveAll(e); rerr != nil {
			d.cfg.Log.Warn("remove a file before unmount", "path", e, "err", rerr)
		}
	}
	if err := mount.CleanupMountPoint(target, d.cfg.Mounter, false); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
	}
	d.unpublished(v)
	d.recorder.forget(target)
	d.forget(target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (n node) NodeStageVolume(context.Context, *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "NodeStageVolume is not used: secrets-store volumes are ephemeral and published directly")
}

func (n node) NodeUnstageVolume(context.Context, *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "NodeUnstageVolume is not used: secrets-store volumes are ephemeral and published directly")
}

func (n node) NodeGetVolumeStats(context.Context, *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	return nil, status.Error(codes.Unimplemented, "NodeGetVolumeStats is not implemented")
}

func (n node) NodeExpandVolume(context.Context, *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	return nil, status.Error(codes.Unimplemented, "NodeExpandVolume is not implemented")
}

// NodeGetCapabilities answers one UNKNOWN capability: the driver stages
// nothing and reports no stats, and an empty list reads as no answer.
func (n node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{
		Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_UNKNOWN}},
	}}}, nil
}

func (n node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.d.cfg.NodeID}, nil
}
