package csidriver

import (
	"encoding/json"
	"maps"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"
)

// What the provider is called with comes from what a volume keeps of the
// kubelet's request: the class's parameters, the volume context over
// them, the tokens from the secrets when kubelet put them there (else
// from the context), and the secrets without the tokens. With rotation
// off a volume keeps none of it.
func TestPublicationCall(t *testing.T) {
	spc := &secretsstorev1.SecretProviderClass{Spec: secretsstorev1.SecretProviderClassSpec{Parameters: map[string]string{"keyvaultName": "demo", ctxPodName: "from the class"}}}
	tests := map[string]struct {
		context, secrets map[string]string
		wantAttrs        map[string]string
		wantSecrets      string
	}{
		"no tokens, no secrets": {
			context:     map[string]string{ctxPodName: "p", ctxSPC: "c"},
			wantAttrs:   map[string]string{"keyvaultName": "demo", ctxPodName: "p", ctxSPC: "c"},
			wantSecrets: "null",
		},
		"tokens in the context": {
			context:     map[string]string{ctxPodName: "p", ctxSATokens: "ctx"},
			wantAttrs:   map[string]string{"keyvaultName": "demo", ctxPodName: "p", ctxSATokens: "ctx"},
			wantSecrets: "null",
		},
		"tokens in the secrets win, and are not passed as secrets": {
			context:     map[string]string{ctxPodName: "p", ctxSATokens: "ctx"},
			secrets:     map[string]string{ctxSATokens: "sec", "clientid": "id"},
			wantAttrs:   map[string]string{"keyvaultName": "demo", ctxPodName: "p", ctxSATokens: "sec"},
			wantSecrets: `{"clientid":"id"}`,
		},
		"empty tokens in the secrets still win": {
			context:     map[string]string{ctxSATokens: "ctx"},
			secrets:     map[string]string{ctxSATokens: ""},
			wantAttrs:   map[string]string{"keyvaultName": "demo", ctxPodName: "from the class", ctxSATokens: ""},
			wantSecrets: "null",
		},
	}
	for name, test := range tests {
		t.Run(name, func(t *testing.T) {
			p := newPublication(&csi.NodePublishVolumeRequest{VolumeContext: test.context, Secrets: test.secrets})
			if got := attributes(spc, p); !maps.Equal(got, test.wantAttrs) {
				t.Errorf("attributes = %v, want %v", got, test.wantAttrs)
			}
			if got, _ := json.Marshal(p.secrets); string(got) != test.wantSecrets {
				t.Errorf("secrets = %s, want %s", got, test.wantSecrets)
			}
			kept := p.withoutCall()
			if kept.context != nil || kept.secrets != nil || kept.tokens != "" || kept.hasTokens {
				t.Errorf("withoutCall kept %+v", kept)
			}
			if kept.target != p.target || kept.podName != p.podName || kept.spcName != p.spcName {
				t.Errorf("withoutCall lost the names: %+v", kept)
			}
		})
	}
}
