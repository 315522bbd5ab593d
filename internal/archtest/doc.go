// Package archtest holds no code: its tests hold the repository to the
// layout rules of docs/design.md (what each top-level package may import) and to
// the habit that every package has a doc comment.
package archtest
