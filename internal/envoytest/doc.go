// Package envoytest loads Envoy bootstraps the way Envoy reads them and checks
// the settings realipd relies on, for the tests of the files realipd ships
// (envoy/) and of the examples that use them (examples/). Load is YAML to JSON,
// strict protojson into Envoy's Bootstrap proto, and ValidateAll on the
// bootstrap and on every message packed in a google.protobuf.Any in it;
// CheckStatic and CheckADS assert a static ext_proc bootstrap and an ADS
// bootstrap. It is a test helper: no realipd binary imports it.
package envoytest
