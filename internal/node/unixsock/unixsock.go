// Package unixsock opens the unix sockets node components serve on, from
// endpoints written as unix:///path/to.sock (the CSI convention).
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
)

// Listen listens on endpoint's socket, creating its directory and
// replacing a socket a previous run left behind. Any other file at that
// path is refused, never removed.
func Listen(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || u.Path == "" || u.Host != "" {
		return nil, fmt.Errorf("--endpoint %q must be unix:///absolute/path.sock", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(u.Path), 0o750); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(u.Path)
	switch {
	case err == nil && fi.Mode().Type() == fs.ModeSocket:
		if err := os.Remove(u.Path); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", u.Path, err)
		}
	case err == nil:
		return nil, fmt.Errorf("%s exists and is not a socket; remove it or choose another --endpoint", u.Path)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return net.Listen("unix", u.Path)
}
