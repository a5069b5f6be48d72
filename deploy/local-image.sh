#!/usr/bin/env bash
# Builds localhost/netcage:latest (what deploy/k8s/ uses) from a netcage binary on this
# machine, FROM scratch: for machines without registry access (deploy/Containerfile builds
# it from source in a Rust image instead).
#   deploy/local-image.sh [path/to/netcage] [image name]
set -euo pipefail
bin=${1:-target/dist/netcage}
image=${2:-localhost/netcage:latest}
[ -x "$bin" ] || { echo "local-image: $bin is not an executable: build it first (cargo build --profile dist --bin netcage)" >&2; exit 2; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/etc/ssl/certs"
cp "$bin" "$ctx/rootfs/netcage"
for lib in $(ldd "$bin" | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do
  cp --parents -L "$lib" "$ctx/rootfs/"
done
cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/" 2>/dev/null || true
printf 'root:x:0:0::/:/netcage\nnetcage:x:1337:1337::/:/netcage\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnetcage:x:1337:\n' > "$ctx/rootfs/etc/group"
cat > "$ctx/Containerfile" <<'END'
FROM scratch
COPY rootfs/ /
USER 1337:1337
ENTRYPOINT ["/netcage"]
END
podman build -q -t "$image" "$ctx"
