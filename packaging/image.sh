#!/bin/sh
# packaging/image.sh: `make image`. Builds realipd's container image from
# the Containerfile with a binary compiled here (CGO_ENABLED=0, -trimpath,
# the version in -ldflags), so that the default target pulls nothing: the
# only network it needs is the Go module proxy, for a module cache that
# lacks realipd's dependencies.
#
# It compiles bin/linux-$ARCH/realipd and collects the licences
# (packaging/licenses.sh) into a temporary build context, with the files
# the Containerfile copies (packaging/realipd.yaml), and builds with
# BUILD_FROM=context, tagging $IMAGE:$TAG and $IMAGE:$VERSION. The source
# tree is not written to.
#
# Environment (the Makefile passes its variables):
#   IMAGE            image name (default localhost/realipd: a local image, never pulled)
#   TAG              the stable tag the examples use (default dev)
#   TARGET           Containerfile target: realipd (default) or realipd-iptables,
#                    which pulls its Debian base (tagged $IMAGE-iptables:...)
#   IPTABLES_BACKEND nft (default) or legacy: the iptables of realipd-iptables
#   ARCH             GOARCH of the image (default: go env GOARCH)
#   CONTAINER_TOOL   docker, podman or buildah (default: the first that works,
#                    in that order; docker only when its daemon answers)
#   VERSION, REVISION, BUILD_DATE   default: packaging/buildinfo.sh
#   GO               the go command (default go)
set -eu
cd "$(dirname "$0")/.."

GO="${GO:-go}"
IMAGE="${IMAGE:-localhost/realipd}"
TAG="${TAG:-dev}"
TARGET="${TARGET:-realipd}"
ARCH="${ARCH:-$($GO env GOARCH)}"
VERSION="${VERSION:-$(packaging/buildinfo.sh version)}"
REVISION="${REVISION:-$(packaging/buildinfo.sh revision)}"
BUILD_DATE="${BUILD_DATE:-$(packaging/buildinfo.sh date)}"

case "$TARGET" in
realipd) name="$IMAGE" ;;
realipd-iptables) name="$IMAGE-iptables" ;;
*)
	echo "image.sh: TARGET=$TARGET: want realipd or realipd-iptables" >&2
	exit 2
	;;
esac

tool="${CONTAINER_TOOL:-}"
if [ -z "$tool" ]; then
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		tool=docker
	elif command -v podman >/dev/null 2>&1; then
		tool=podman
	elif command -v buildah >/dev/null 2>&1; then
		tool=buildah
	else
		echo "image.sh: no docker (with a running daemon), podman or buildah found; set CONTAINER_TOOL" >&2
		exit 1
	fi
fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/realipd-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT

echo "image.sh: building realipd $VERSION for linux/$ARCH"
CGO_ENABLED=0 GOOS=linux GOARCH="$ARCH" $GO build -trimpath \
	-ldflags "-s -w -X main.version=$VERSION -X main.revision=$REVISION -X main.buildDate=$BUILD_DATE" \
	-o "$ctx/bin/linux-$ARCH/realipd" ./cmd/realipd
GOOS=linux GOARCH="$ARCH" packaging/licenses.sh "$ctx/bin/licenses"
mkdir -p "$ctx/packaging"
cp packaging/realipd.yaml "$ctx/packaging/"

set -- -f "$PWD/Containerfile" --target "$TARGET" --platform "linux/$ARCH" \
	--build-arg BUILD_FROM=context \
	--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg BUILD_DATE="$BUILD_DATE" \
	-t "$name:$TAG" -t "$name:$VERSION"
if [ "$TARGET" = realipd-iptables ]; then
	set -- "$@" --build-arg IPTABLES_BACKEND="${IPTABLES_BACKEND:-nft}"
fi
case "$tool" in
buildah) set -- bud --layers=false "$@" ;;
*) set -- build "$@" ;;
esac

echo "image.sh: $tool $* $ctx"
"$tool" "$@" "$ctx"

# buildah and podman keep the stage that holds the binary as an unnamed
# image: remove it (and those of earlier builds).
case "$tool" in
buildah | podman)
	for id in $("$tool" images --quiet --filter dangling=true --filter label=io.github.realipd.stage=binary); do
		"$tool" rmi "$id" >/dev/null || true
	done
	;;
esac

case "$tool" in
buildah) size="$(buildah images --format '{{.Size}}' "$name:$TAG" | head -n 1)" ;;
*) size="$("$tool" image ls --format '{{.Size}}' "$name:$TAG" | head -n 1)" ;;
esac
echo "image.sh: built $name:$TAG and $name:$VERSION ($size) with $tool"
