package inmem

import (
	"testing"

	"github.com/cofferhq/coffer/internal/server/storage/physical"
	"github.com/cofferhq/coffer/internal/server/storage/physical/physicaltest"
	"github.com/cofferhq/coffer/internal/testing/fuzzseed"
)

func TestBackend(t *testing.T) {
	physicaltest.Exercise(t, func(t *testing.T) physical.Backend { return New() })
}

func TestSeedCorpus(t *testing.T) { fuzzseed.Corpus(t, "FuzzKeys", physicaltest.Seeds) }

func FuzzKeys(f *testing.F) {
	physicaltest.FuzzKeys(f, func(testing.TB) physical.Backend { return New() })
}
