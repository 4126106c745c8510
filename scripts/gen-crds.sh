#!/usr/bin/env bash
# Regenerates deploy/crds with controller-gen:
#  - from the upstream Secrets Store CSI driver's Go types
#    (sigs.k8s.io/secrets-store-csi-driver/apis, the version go.mod pins),
#    so Coffer serves exactly the upstream schema: v1 (stored) and v1alpha1;
#  - from internal/node/podidentity, the aadpodidentity.k8s.io/v1 types, whose
#    DeepCopy methods it also writes;
#  - from internal/sync/apis/v1alpha1, Coffer's secret-sync.x-k8s.io/v1alpha1
#    types (upstream's secrets-store-sync-controller wire format), and their
#    DeepCopy methods.
# The tests install these files.
set -euo pipefail
# Build with the patched toolchain go.mod names, whatever the environment says.
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/go.mod")"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
gen="go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.20.0"
export GOFLAGS=-mod=readonly
$gen crd paths=sigs.k8s.io/secrets-store-csi-driver/apis/... output:crd:dir=deploy/crds
$gen object paths=./internal/node/podidentity/...
$gen crd paths=./internal/node/podidentity/... output:crd:dir=deploy/crds
$gen object paths=./internal/sync/apis/...
$gen crd paths=./internal/sync/apis/... output:crd:dir=deploy/crds
# The Helm chart ships the same CRDs.
cp deploy/crds/*.yaml deploy/helm/coffer/crds/
