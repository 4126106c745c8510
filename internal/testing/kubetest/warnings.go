package kubetest

import "sync"

// Warnings records the Warning headers the apiserver returns, which is
// where kubectl shows deprecations and admission warnings. It is a
// rest.WarningHandler: set it as a rest.Config's WarningHandler (with
// WarningHandlerWithContext nil) before building a client from it.
type Warnings struct {
	mu   sync.Mutex
	list []string
}

// HandleWarningHeader is rest.WarningHandler.
func (w *Warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// Take returns the warnings seen since the last Take.
func (w *Warnings) Take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}
