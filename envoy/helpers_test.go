package envoy_test

import "github.com/realipd/realipd/internal/envoytest"

// The loader and the settings checks live in internal/envoytest, shared with
// the tests of examples/; these names keep the tests here short.
type (
	loaded   = envoytest.Loaded
	endpoint = envoytest.Endpoint
)

const metadataNS = envoytest.MetadataNS

func load(data []byte) (*loaded, error) { return envoytest.Load(data) }

func checkStatic(l *loaded, extProcAt endpoint) error { return envoytest.CheckStatic(l, extProcAt) }

func checkADS(l *loaded, xdsAt endpoint) error { return envoytest.CheckADS(l, xdsAt) }
