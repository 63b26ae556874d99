#!/bin/sh
# Side-by-side benchmark of fender against a raw socket floor, direct HTTP
# and haproxy (scripts/bench). Installs haproxy (Debian package) first when
# it is missing; without it the haproxy row is skipped. Arguments go to the
# tool: scripts/bench.sh [-runs 3] [-quick] [-json] [-out FILE] [-fender PATH] [-skip-haproxy]
set -eu
cd "$(dirname "$0")/.."

have_haproxy() {
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]
}

skip=false
for a in "$@"; do
	case "$a" in -skip-haproxy | --skip-haproxy) skip=true ;; esac
done

if ! $skip && ! have_haproxy; then
	if command -v apt-get >/dev/null 2>&1; then
		sudo=""
		if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
			sudo="sudo"
		fi
		echo "bench.sh: installing haproxy" >&2
		export DEBIAN_FRONTEND=noninteractive
		$sudo apt-get install -y haproxy >&2 ||
			{ $sudo apt-get update >&2 && $sudo apt-get install -y haproxy >&2; } ||
			echo "bench.sh: could not install haproxy; its row will be skipped" >&2
	else
		echo "bench.sh: haproxy missing and no apt-get; its row will be skipped" >&2
	fi
fi

exec go run ./scripts/bench "$@"
