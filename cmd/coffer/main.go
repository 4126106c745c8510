// Command coffer is Coffer's single binary: servers, node components and the
// CLI.
package main

import (
	"os"

	"github.com/cofferhq/coffer/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
