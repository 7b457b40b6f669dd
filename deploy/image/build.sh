#!/usr/bin/env bash
# The Bento's OCI image, built with whatever builder this machine has: `make image` runs
#
#   deploy/image/build.sh BENTO_TAG        # e.g. sound_classifier:q4sebfxrjwjd6ax4 (make bento made it)
#
# and tags the result sound_classifier:<version> and sound_classifier:latest (what
# deploy/kubernetes/base names). Where each piece comes from:
#   builder   docker if its engine answers, else podman, else buildah (BUILDER=... picks one); with
#             none and root, `apt-get install buildah` (Debian's buildah 1.28 builds without a daemon).
#   base      $BASE_IMAGE if set; else python:3.11-slim-bookworm if the builder can pull it; else
#             a base made here from Debian's packages: debootstrap --variant=minbase bookworm with
#             python3.11 and python3-venv, committed as localhost/sound-image-base:bookworm-py3.11
#             (minutes, once: later builds reuse it; `time make image` from nothing: 6 min 47 s).
#   image     `bentoml containerize --backend BUILDER`: BentoML renders its Dockerfile through
#             deploy/Dockerfile.template (the lean one: no apt-get, no compilers), and the Bento's
#             own install.sh installs requirements/serve.txt from PyPI into /app/.venv.
# With buildah (and podman), the build mounts this machine's CA bundle read-only, so pip trusts
# what the machine trusts (a proxy's CA, for one); the bundle is not copied into the image.
set -euo pipefail
tag=${1:?usage: deploy/image/build.sh BENTO_TAG}
name=${tag%%:*}; version=${tag#*:}
project=$(cd "$(dirname "$0")/../.." && pwd)
bentoml=${BENTOML:-$project/.venv/bin/bentoml}
debian_base=localhost/sound-image-base:bookworm-py3.11
slim_base=docker.io/library/python:3.11-slim-bookworm
ca_bundle=/etc/ssl/certs/ca-certificates.crt

pick_builder() {
  if [ -n "${BUILDER:-}" ]; then echo "$BUILDER"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null; then echo podman; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "no image builder: installing buildah (apt-get)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
    echo buildah; return
  fi
  echo "no image builder (docker with a running engine, podman or buildah); install one, e.g. apt-get install buildah" >&2
  exit 2
}

has_image() {  # has_image BUILDER IMAGE
  case $1 in
    buildah) buildah images -q "$2" 2>/dev/null | grep -q . ;;
    *) "$1" image inspect "$2" >/dev/null 2>&1 ;;
  esac
}

pull() {  # pull BUILDER IMAGE: fails fast where no registry answers
  timeout 300 "$1" pull -q "$2" >/dev/null 2>&1
}

# The Debian base: what python:3.11-slim-bookworm gives, from Debian's packages instead of a
# registry. minbase is Debian's essential set plus apt; python3-venv brings ensurepip's pip.
debian_base_image() {  # debian_base_image BUILDER
  local builder=$1
  has_image "$builder" "$debian_base" && return
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || { echo "no registry serves $slim_base and debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local root; root=$(mktemp -d "${TMPDIR:-/var/tmp}/sound-image-rootfs.XXXXXX")
  trap 'rm -rf "$root"' RETURN
  local mirror; mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  echo "building the base image $debian_base from Debian's packages (debootstrap, a few minutes, once)" >&2
  # python3-venv (which brings the python3 package), not python3.11-venv alone: with the latter,
  # debootstrap failed here "configuring base packages (possibly python3.11-venv is at fault)".
  if ! debootstrap --variant=minbase --include=python3.11,python3-venv,ca-certificates \
      bookworm "$root" ${mirror:+"$mirror"} > "$root.log" 2>&1; then
    cp "$root/debootstrap/debootstrap.log" "$root.debootstrap.log" 2>/dev/null || true
    echo "debootstrap failed: $root.log, $root.debootstrap.log" >&2; exit 1
  fi
  rm -f "$root.log"
  # Package lists and caches, docs, man pages and message translations (33 MB; the image runs in
  # C.UTF-8): nothing the served process reads.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*
  # Debian's python3.11 refuses pip outside a venv (PEP 668); the image's venv does not need
  # this, but BentoML's own templates install uv with the system pip, as in the official image.
  rm -f "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED
  ln -sf python3.11 "$root"/usr/bin/python3
  if [ "$builder" = buildah ]; then
    local c; c=$(buildah from --name "sound-image-base-$$" scratch)
    local m; m=$(buildah mount "$c")
    cp -a "$root"/. "$m"/
    buildah umount "$c" >/dev/null
    buildah config --env LANG=C.UTF-8 --cmd /usr/bin/python3.11 "$c"
    buildah commit -q "$c" "$debian_base" >/dev/null
    buildah rm "$c" >/dev/null
  else
    tar -C "$root" -c . | "$builder" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/usr/bin/python3.11"]' - "$debian_base" >/dev/null
  fi
}

builder=$(pick_builder)
if [ -n "${BASE_IMAGE:-}" ]; then base=$BASE_IMAGE
elif has_image "$builder" "$slim_base" || pull "$builder" "$slim_base"; then base=$slim_base
else debian_base_image "$builder"; base=$debian_base
fi
echo "builder: $builder; base image: $base" >&2

opts=(--opt "build-arg=BASE_IMAGE=$base")
case $builder in
  buildah|podman)
    opts+=(--opt pull-never)
    [ -f "$ca_bundle" ] && opts+=(--opt "volume=$ca_bundle:/etc/ssl/certs/host-ca-certificates.crt:ro" \
                                 --opt "build-arg=PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt")
    ;;
esac
# buildah cannot start an OCI runtime inside every container; chroot isolation needs none. It also
# keeps no layers unless asked: with them, a new Bento with the same requirements reuses the pip layer.
[ "$builder" = buildah ] && opts+=(--opt isolation=chroot --opt layers)

# BentoML copies the Bento into a temporary build context and refuses a dockerfile_template there
# unless it lies below the directory it runs from ("Accessing file outside of current working
# directory is not allowed"; from the project's root it always does): run it in a directory of our
# own that is also its TMPDIR.
work=$(mktemp -d "${TMPDIR:-/tmp}/sound-image-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
export TMPDIR=$work
start=$(date +%s)
"$bentoml" containerize --backend "$builder" "${opts[@]}" -t "$name:$version" -t "$name:latest" "$tag"
echo "built $name:$version (and $name:latest) with $builder in $(( $(date +%s) - start )) s" >&2
