#!/bin/sh
# packaging/licenses.sh DIR: copies into DIR what the licences of the
# realipd binary ask its distributions to carry: realipd's LICENSE and
# NOTICE, and for every module linked into cmd/realipd (for GOOS/GOARCH as
# set) its licence and notice files, as DIR/third_party/MODULE/FILE. The
# release archives (packaging/release.sh) and the container image
# (Containerfile, /licenses) include DIR. It needs the modules in the
# module cache (go mod download, or any build).
set -eu
out="${1:?usage: $0 DIR}"
cd "$(dirname "$0")/.."

mkdir -p "$out/third_party"
cp LICENSE NOTICE "$out/"
go list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Dir}}{{end}}{{end}}' ./cmd/realipd |
	sort -u |
	while read -r path dir; do
		found=""
		for f in "$dir"/*; do
			case "$(basename "$f")" in
			LICENSE* | LICENCE* | COPYING* | NOTICE*)
				[ -f "$f" ] || continue
				mkdir -p "$out/third_party/$path"
				cp "$f" "$out/third_party/$path/"
				chmod 0644 "$out/third_party/$path/$(basename "$f")"
				found=1
				;;
			esac
		done
		if [ -z "$found" ]; then
			echo "licenses.sh: module $path ($dir) has no licence file" >&2
			exit 1
		fi
	done
