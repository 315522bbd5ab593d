#!/bin/sh
# Prints one of the values a realipd build records with -ldflags (see
# cmd/realipd/version.go), from the git checkout it is run in:
#
#   packaging/buildinfo.sh version    git describe --tags (v0.1.0, v0.1.0-3-gabc1234),
#                                     "-dirty" with uncommitted changes; "devel" before the first tag
#   packaging/buildinfo.sh revision   the commit (40 hex digits, "-dirty" likewise), or "unknown"
#   packaging/buildinfo.sh date       the commit's date in UTC (RFC 3339), or SOURCE_DATE_EPOCH's
#                                     when it is set: two builds of one commit are identical
#   packaging/buildinfo.sh ldflags    the -X flags for all three, from VERSION, REVISION and
#                                     BUILD_DATE when they are set, else as above
#
# The Makefile, packaging/image.sh and packaging/release.sh use it; outside
# a git checkout (a source archive) every value says so ("devel",
# "unknown"), and VERSION, REVISION and BUILD_DATE can be given instead.
set -eu
cd "$(dirname "$0")/.."

in_git() { git rev-parse --git-dir >/dev/null 2>&1; }

version() {
	if in_git && v="$(git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null)"; then
		echo "$v"
	else
		echo devel
	fi
}

revision() {
	if in_git && r="$(git rev-parse HEAD 2>/dev/null)"; then
		git diff --quiet HEAD -- 2>/dev/null || r="$r-dirty"
		echo "$r"
	else
		echo unknown
	fi
}

date_() {
	t="${SOURCE_DATE_EPOCH:-}"
	if [ -z "$t" ] && in_git; then
		t="$(git log -1 --format=%ct 2>/dev/null || true)"
	fi
	if [ -z "$t" ]; then
		echo unknown
		return
	fi
	# GNU date, then BSD date.
	date -u -d "@$t" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -r "$t" +%Y-%m-%dT%H:%M:%SZ
}

case "${1:-}" in
version) version ;;
revision) revision ;;
date) date_ ;;
ldflags)
	echo "-X main.version=${VERSION:-$(version)} -X main.revision=${REVISION:-$(revision)} -X main.buildDate=${BUILD_DATE:-$(date_)}"
	;;
*)
	echo "usage: $0 version|revision|date|ldflags" >&2
	exit 2
	;;
esac
