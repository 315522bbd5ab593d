#!/bin/sh
# packaging/release.sh: `make release`. Builds static realipd binaries
# (CGO_ENABLED=0, -trimpath, version, commit and date in -ldflags) for
# linux/amd64 and linux/arm64, and packs each with what its licences ask
# for into a reproducible archive:
#
#   dist/realipd-VERSION-linux-ARCH.tar.gz
#       realipd-VERSION-linux-ARCH/realipd
#       realipd-VERSION-linux-ARCH/{LICENSE,NOTICE,README.md,CHANGELOG.md}
#       realipd-VERSION-linux-ARCH/third_party/MODULE/...   (packaging/licenses.sh)
#   dist/SHA256SUMS        sha256sum of each archive; check with sha256sum -c SHA256SUMS
#
# Two runs on one commit give the same bytes: the date is the commit's
# (packaging/buildinfo.sh), and the archives have fixed owners, order and
# times.
#
# Environment: DIST (default dist), PLATFORMS (default "linux/amd64
# linux/arm64"), VERSION, REVISION, BUILD_DATE (default:
# packaging/buildinfo.sh), GO (default go).
set -eu
cd "$(dirname "$0")/.."

GO="${GO:-go}"
DIST="${DIST:-dist}"
PLATFORMS="${PLATFORMS:-linux/amd64 linux/arm64}"
VERSION="${VERSION:-$(packaging/buildinfo.sh version)}"
REVISION="${REVISION:-$(packaging/buildinfo.sh revision)}"
BUILD_DATE="${BUILD_DATE:-$(packaging/buildinfo.sh date)}"
# The archives' file times: the commit's date, or the epoch when unknown.
mtime="$BUILD_DATE"
[ "$mtime" = unknown ] && mtime="1970-01-01T00:00:00Z"

mkdir -p "$DIST"
archives=""
for platform in $PLATFORMS; do
	os="${platform%/*}"
	arch="${platform#*/}"
	name="realipd-$VERSION-$os-$arch"
	dir="$DIST/$name"
	rm -rf "$dir" "$DIST/$name.tar.gz"
	mkdir -p "$dir"
	echo "release.sh: $name"
	CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" $GO build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION -X main.revision=$REVISION -X main.buildDate=$BUILD_DATE" \
		-o "$dir/realipd" ./cmd/realipd
	GOOS="$os" GOARCH="$arch" packaging/licenses.sh "$dir"
	cp README.md CHANGELOG.md "$dir/"
	chmod -R u=rwX,go=rX "$dir"
	(cd "$DIST" && find "$name" -print0 | LC_ALL=C sort -z |
		tar --null --no-recursion -T - --owner=0 --group=0 --numeric-owner \
			--mtime="$mtime" --format=ustar -cf - | gzip -n >"$name.tar.gz")
	archives="$archives $name.tar.gz"
done
# shellcheck disable=SC2086 # one word per archive
(cd "$DIST" && sha256sum $archives >SHA256SUMS)
echo "release.sh: $DIST/SHA256SUMS"
cat "$DIST/SHA256SUMS"
