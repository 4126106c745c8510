package inmem

import (
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
)

func TestBackend(t *testing.T) {
	physicaltest.Exercise(t, func(t *testing.T) physical.Backend { return New() })
}
