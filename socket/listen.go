// Package socket is fender's Unix-socket front: the listener, the NDJSON
// framing of request and answer lines, per-connection back-pressure, peer
// credentials and the drain on shutdown. It hands each request line to a
// Handler and writes back exactly one answer line for it.
package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrInUse is returned by Listen when a live process listens on the path.
var ErrInUse = errors.New("socket is in use by a live process")

// Listen binds a Unix stream socket at path with file mode mode. A leftover
// socket file that nobody listens on is removed first; a live one is never
// taken (ErrInUse), and a path that is not a socket is never removed. The
// socket is created under a umask that leaves it no more open than mode, so
// there is no window in which it is; a missing directory is made 0750.
func Listen(path string, mode os.FileMode) (*net.UnixListener, error) {
	if dir := filepath.Dir(path); dir != "" {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, fmt.Errorf("make socket directory: %w", err)
			}
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not removing it", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, fmt.Errorf("%s: %w", path, ErrInUse)
		case errors.Is(err, syscall.ECONNREFUSED):
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("remove leftover socket: %w", err)
			}
		default:
			return nil, fmt.Errorf("check leftover socket %s: %w", path, err)
		}
	}
	old := unix.Umask(int(0o777 &^ mode.Perm()))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on socket: %w", err)
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, nil
}
