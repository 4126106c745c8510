package server

import (
	"regexp"
	"sync"
	"testing"
)

// Request ids keep Key Vault's shape, and no two are alike, however many
// requests take one at once.
func TestRequestIDsAreUnique(t *testing.T) {
	shape := regexp.MustCompile(`^[0-9a-f]{32}$`)
	const workers, each = 8, 5000
	var mu sync.Mutex
	seen := make(map[string]bool, workers*each)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids := make([]string, each)
			for i := range ids {
				ids[i] = requestID()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if !shape.MatchString(id) {
					t.Errorf("request id %q is not 32 hex digits", id)
				}
				if seen[id] {
					t.Errorf("request id %s given twice", id)
				}
				seen[id] = true
			}
		}()
	}
	wg.Wait()
}
