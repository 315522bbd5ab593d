// Package packaging holds what turns the repository into things to
// install, and the tests that check them: the image's default
// configuration (realipd.yaml), packaging/image.sh (make image: the
// Containerfile at the repository's root built with a binary compiled on
// the host), packaging/release.sh (make release: static linux/amd64 and
// linux/arm64 archives with their licences and SHA256SUMS),
// packaging/licenses.sh (the licence files those carry) and
// packaging/buildinfo.sh (the version, commit and date a build records).
// The package has no Go API.
package packaging
