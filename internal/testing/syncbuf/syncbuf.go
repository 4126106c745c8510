// Package syncbuf is a bytes.Buffer that a process's output (or a
// logger) writes to from many goroutines while a test reads it.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer collects writes; its methods are safe to call concurrently.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
