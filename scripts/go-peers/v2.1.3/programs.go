//go:build tools

// The programs the wrapper builds; imported only so that `go mod tidy`
// records every dependency they need in go.sum.
package programs

import (
	_ "github.com/syncthing/syncthing/cmd/stdiscosrv"
	_ "github.com/syncthing/syncthing/cmd/strelaysrv"
	_ "github.com/syncthing/syncthing/cmd/syncthing"
)
