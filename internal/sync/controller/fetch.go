package controller

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/providerclient"
	syncv1 "github.com/cofferhq/coffer/internal/sync/apis/v1alpha1"
)

// The attributes a CSI driver passes to a provider beside the class's
// parameters (the upstream driver's volume context keys). The controller
// fills them as a driver would for a pod of the SecretSync's namespace
// running as its service account.
const (
	attrPodName        = "csi.storage.k8s.io/pod.name"
	attrPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	attrPodUID         = "csi.storage.k8s.io/pod.uid"
	attrServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	attrTokens         = "csi.storage.k8s.io/serviceAccount.tokens"
)

// filePermission is what the request's permission says: the files are
// never written, but providers expect a mode.
const filePermission = "420" // 0644, JSON

// targetPath names a SecretSync's "volume" in the provider protocol: no
// directory is ever mounted there, but providers key what they watch for
// push by it, so it must be one per SecretSync.
func targetPath(namespace, name string) string { return "/secretsync/" + namespace + "/" + name }

// parseTarget is targetPath's inverse.
func parseTarget(target string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(target, "/secretsync/")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, "/")
	return namespace, name, ok && namespace != "" && name != "" && !strings.Contains(name, "/")
}

// fetched is a provider's answer.
type fetched struct {
	files    map[string][]byte
	versions map[string]string
}

// fetch calls the class's provider for ss with a token of its service
// account.
func (r *Reconciler) fetch(ctx context.Context, ss *syncv1.SecretSync, spc *secretsstorev1.SecretProviderClass, previous map[string]string) (*fetched, *syncError) {
	provider := string(spc.Spec.Provider)
	if !providerclient.ValidName(provider) {
		return nil, failed(syncv1.ReasonControllerSPCError, "SecretProviderClass %s names provider %q, which is not a provider name", spc.Name, provider)
	}
	tokens, err := r.tokens.attribute(ctx, ss.Namespace, ss.Spec.ServiceAccountName)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, failed(syncv1.ReasonUserInputValidationFailed, "service account %s/%s does not exist", ss.Namespace, ss.Spec.ServiceAccountName)
		}
		return nil, &syncError{Reason: writeReason(err, syncv1.ReasonControllerInternalError), Err: err}
	}
	attrs := maps.Clone(spc.Spec.Parameters)
	if attrs == nil {
		attrs = map[string]string{}
	}
	attrs[attrPodName], attrs[attrPodUID] = r.opts.PodName, r.opts.PodUID
	attrs[attrPodNamespace], attrs[attrServiceAccount] = ss.Namespace, ss.Spec.ServiceAccountName
	if tokens != "" {
		attrs[attrTokens] = tokens
	} else {
		delete(attrs, attrTokens)
	}
	ab, err := json.Marshal(attrs)
	if err != nil {
		return nil, failed(syncv1.ReasonControllerInternalError, "encoding the attributes: %v", err)
	}
	req := &v1alpha1.MountRequest{Attributes: string(ab), Secrets: "{}", Permission: filePermission, TargetPath: targetPath(ss.Namespace, ss.Name)}
	for id, v := range previous {
		req.CurrentObjectVersion = append(req.CurrentObjectVersion, &v1alpha1.ObjectVersion{Id: id, Version: v})
	}
	mctx, cancel := context.WithTimeout(ctx, r.opts.ProviderTimeout)
	defer cancel()
	resp, err := r.providers.Mount(mctx, provider, req)
	if err != nil {
		var pe *providerclient.ProviderError
		switch {
		case errors.Is(err, providerclient.ErrNotFound):
			return nil, failed(syncv1.ReasonControllerSPCError, "SecretProviderClass %s: %v", spc.Name, err)
		case errors.As(err, &pe):
			// A refused token is not kept: the next try gets a new one.
			r.tokens.forget(ss.Namespace, ss.Spec.ServiceAccountName)
			return nil, &syncError{Reason: syncv1.ReasonProviderError, Err: err}
		case status.Code(err) == codes.ResourceExhausted:
			return nil, failed(syncv1.ReasonProviderError, "%v (the answer exceeds MaxCallRecvMsgSize, %d bytes)", err, r.opts.MaxCallRecvMsgSize)
		}
		return nil, &syncError{Reason: syncv1.ReasonProviderError, Err: err}
	}
	out := &fetched{files: make(map[string][]byte, len(resp.GetFiles())), versions: map[string]string{}}
	for _, f := range resp.GetFiles() {
		out.files[f.GetPath()] = f.GetContents()
	}
	for _, v := range resp.GetObjectVersion() {
		out.versions[v.GetId()] = v.GetVersion()
	}
	return out, nil
}

// writeReason is the condition reason of an apiserver's refusal: its
// admission policies' (the message names the policy), an invalid object,
// or fallback.
func writeReason(err error, fallback string) string {
	switch {
	case strings.Contains(strings.ToLower(err.Error()), "validatingadmissionpolicy"):
		return syncv1.ReasonValidatingAdmissionPolicyCheckFailed
	case apierrors.IsInvalid(err):
		return syncv1.ReasonUserInputValidationFailed
	}
	return fallback
}
