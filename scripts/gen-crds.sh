#!/usr/bin/env bash
# Regenerates deploy/crds from the upstream Secrets Store CSI driver's Go
# types (sigs.k8s.io/secrets-store-csi-driver/apis, the version go.mod
# pins) with controller-gen, so Coffer serves exactly the upstream schema:
# v1 (stored) and v1alpha1. The tests install these files.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
GOFLAGS=-mod=readonly go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.20.0 \
	crd paths=sigs.k8s.io/secrets-store-csi-driver/apis/... output:crd:dir=deploy/crds
