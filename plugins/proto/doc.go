// Package policypb holds the Go code generated from policy.proto: the gRPC
// contract between realipd and an out-of-process IP policy plugin. Plugin
// authors use package sdk instead; regenerate this package with gen.sh.
package policypb
