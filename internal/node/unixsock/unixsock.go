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
	"strconv"
	"strings"
)

// ErrEndpoint is an endpoint that is not unix:///absolute/path.sock.
var ErrEndpoint = errors.New("must be unix:///absolute/path.sock")

// Path returns the socket path of endpoint.
func Path(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || u.Path == "" || u.Host != "" || !filepath.IsAbs(u.Path) || strings.HasSuffix(u.Path, "/") {
		return "", fmt.Errorf("%q %w", endpoint, ErrEndpoint)
	}
	return u.Path, nil
}

// Listen listens on endpoint's socket, creating its directory and
// replacing a socket a previous run left behind. Any other file at that
// path is refused, never removed.
//
// A mode other than 0 is the socket's permission bits, and it holds from
// the first moment anyone can connect: the socket is bound under a
// temporary name, chmodded, then renamed into place. A chmod after binding
// the real path would leave a window in which a caller the mode shuts out
// could connect. Closing the listener removes the socket.
func Listen(endpoint string, mode fs.FileMode) (net.Listener, error) {
	path, err := Path(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode().Type() == fs.ModeSocket:
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the stale socket %s: %w", path, err)
		}
	case err == nil:
		return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another endpoint", path)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	if mode == 0 {
		return net.Listen("unix", path)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"."+strconv.Itoa(os.Getpid())+".tmp")
	os.Remove(tmp) // left by a crash of this pid's predecessor
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	return &renamed{UnixListener: ln, path: path}, nil
}

// renamed is a listener whose socket was renamed after binding: its own
// unlink on close would look for the old name.
type renamed struct {
	*net.UnixListener
	path string
}

func (l *renamed) Close() error {
	err := l.UnixListener.Close()
	os.Remove(l.path)
	return err
}
