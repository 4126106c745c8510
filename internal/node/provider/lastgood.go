package provider

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/secrets-store-csi-driver/provider/v1alpha1"

	"github.com/cofferhq/coffer/internal/node/azparams"
)

// lastGoodFor is how old a volume's last-known-good files may be and still
// be served.
const lastGoodFor = 24 * time.Hour

// lastGood keeps, for classes with lastKnownGood, the files of each
// volume's last successful mount, by identity and class: a pod started
// while the vault or the authority is unreachable gets what the same
// identity last got here. In memory only (the provider's), bounded by
// bytes, least recently used first out; a restarted provider starts empty.
type lastGood struct{ l *lru[goodMount] }

type goodMount struct {
	resp *v1alpha1.MountResponse
	at   time.Time
}

func newLastGood(max int) *lastGood { return &lastGood{l: newLRU[goodMount](max)} }

// lastGoodKey names what a mount asks for and who asks: the vault, the
// identity as the node knows it without the vault (a workload identity's
// client id with the pod's namespace and service account, as in its
// federated credential's subject; a service principal's id with a digest
// of its secret), the objects and the file mode.
func lastGoodKey(m *azparams.Mount, base, permission string) string {
	who := m.PodNS + "/" + m.ServiceAccount
	if m.Auth.Mode == azparams.ServicePrincipal {
		sum := sha256.Sum256([]byte(m.Auth.Secret))
		who = hex.EncodeToString(sum[:])
	}
	b, _ := json.Marshal(struct {
		Base, Tenant, Who, ClientID, Permission string
		Mode                                    azparams.AuthMode
		Objects                                 []azparams.Object
	}{base, m.TenantID, who, m.Auth.ClientID, permission, m.Auth.Mode, m.Objects})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (g *lastGood) put(key string, resp *v1alpha1.MountResponse, at time.Time) {
	g.l.put(key, goodMount{resp: proto.Clone(resp).(*v1alpha1.MountResponse), at: at}, proto.Size(resp))
}

// get returns the files stored under key, if they are recent enough, and
// when they were mounted.
func (g *lastGood) get(key string, now time.Time) (*v1alpha1.MountResponse, time.Time, bool) {
	it, ok := g.l.get(key)
	if ok && now.Sub(it.at) > lastGoodFor {
		g.l.delete(key) // too old to serve: no reason to keep its secrets
		ok = false
	}
	if !ok {
		return nil, time.Time{}, false
	}
	return proto.Clone(it.resp).(*v1alpha1.MountResponse), it.at, true
}

// drop forgets what is stored under key.
func (g *lastGood) drop(key string) { g.l.delete(key) }
