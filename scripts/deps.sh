#!/usr/bin/env bash
# Installs the system tools the tests use, from Debian packages, when they
# are missing. The tests fail (never skip) without them.
set -euo pipefail
# Build with the patched toolchain go.mod names, whatever the environment says.
export GOTOOLCHAIN="$(awk '$1 == "toolchain" { print $2 }' "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/go.mod")"
need=()
command -v openssl >/dev/null || need+=(openssl)
# The node agent's tests: a network namespace (ip) and the DNAT redirect.
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
# The e2e cluster: its node's network namespace (nsenter), container
# runtime and CNI plugins (test/e2e).
command -v nsenter >/dev/null || need+=(util-linux)
# The power-loss test: an ext4 filesystem on a loop device.
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# The az sign-in tests (test/azcli) drive Debian's Azure CLI, 2.45 on
# bookworm: a large package (about 1,900 files of Python SDKs).
command -v az >/dev/null || need+=(azure-cli)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
