// Wrapper module: builds Syncthing 2.1.3's programs for the end-to-end
// tests (scripts/build-go-peers). Its module path has no /v2, so the
// version is asked for by commit (tag v2.1.3 is commit
// 946e2b83a1f6c6ae119427c09e0a5802940b82ff): scripts/build-go-peers adds
// the require line with `go get …@946e2b83a1f6`, which gives it a
// pseudo-version. The replace lines repeat Syncthing's own.
module peers.test/syncthing

go 1.25.0

replace github.com/gobwas/glob v0.2.3 => github.com/calmh/glob v0.0.0-20220615080505-1d823af5017b

replace github.com/jackpal/gateway v1.1.1 => github.com/marbens-arch/gateway v1.1.2-0.20260308173556-c567cc04e7d4
