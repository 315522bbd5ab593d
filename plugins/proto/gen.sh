#!/bin/sh
# Regenerates the Go code for policy.proto. Run from anywhere:
#   plugins/proto/gen.sh
# Needs protoc (apt-get install -y protobuf-compiler; the committed code was
# made with libprotoc 3.21.12) and, on PATH:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
set -eu
cd "$(dirname "$0")"
protoc --proto_path=. \
	--go_out=. --go_opt=paths=source_relative \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative \
	policy.proto
