package server

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// MaxConnections bounds the client connections the server keeps open at
// once. Each costs a goroutine, buffers and a file descriptor: an idle
// TLS keep-alive connection costs about 55-75 KiB of RSS (measured in
// test/exhaust), so the cap bounds that memory to about 2.2 GiB. It is far
// above what clients need: idle keep-alive
// connections close after the server's IdleTimeout, connections that never
// finish a request after its ReadHeaderTimeout, and held reads share
// HTTP/2 connections. The process's RLIMIT_NOFILE may be lower; Go raises
// the soft limit to the hard one at start-up.
const MaxConnections = 30000

// capListener closes connections accepted past max at once, rather than
// blocking Accept as golang.org/x/net/netutil's LimitListener does: a
// blocked Accept would leave every new client, normal ones included,
// waiting in the kernel's backlog behind a flood. A refused client sees
// its connection closed and retries; the server logs the refusals at most
// once a minute.
type capListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused atomic.Int64
	log     *slog.Logger

	mu       sync.Mutex
	lastWarn time.Time
}

func newCapListener(ln net.Listener, max int, log *slog.Logger) *capListener {
	return &capListener{Listener: ln, max: int64(max), log: log}
}

// Accept returns the next connection under the cap.
func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &cappedConn{Conn: c, l: l}, nil
		}
		// Counted before the close, so that whoever sees the close also
		// sees the count.
		l.refused.Add(1)
		l.open.Add(-1)
		c.Close()
		l.warn()
	}
}

func (l *capListener) warn() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.lastWarn) < time.Minute {
		return
	}
	l.lastWarn = time.Now()
	l.log.Warn("refusing new connections: the server holds its cap of open connections; most are likely idle or slow clients, and they close on the server's timeouts",
		"cap", l.max, "refusedSoFar", l.refused.Load())
}

// Open returns the connections open now.
func (l *capListener) Open() int64 { return l.open.Load() }

// Refused returns the connections closed at the cap so far.
func (l *capListener) Refused() int64 { return l.refused.Load() }

// cappedConn gives its place back once, when closed.
type cappedConn struct {
	net.Conn
	l    *capListener
	once sync.Once
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
