//go:build !node

package cli

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/cofferhq/coffer/internal/server"
	"github.com/cofferhq/coffer/internal/server/api/mgmthttp"
	"github.com/cofferhq/coffer/internal/server/dev/devenv"
	"github.com/cofferhq/coffer/internal/server/endpoint"
	"github.com/cofferhq/coffer/internal/server/identity/authority"
	"github.com/cofferhq/coffer/internal/server/identity/bootstrap"
	"github.com/cofferhq/coffer/internal/server/identity/rbac"
	"github.com/cofferhq/coffer/internal/server/storage/rootkey"
	"github.com/spf13/cobra"
)

func (a *app) operatorCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "operator", Short: "Installation tasks: initialise, generate and rotate keys"}
	cmd.AddCommand(a.operatorInit(), a.generateRootKey(), a.rotateRootKey(), a.rotateDataKey(), a.rotateSigningKey(),
		a.migrateCmd(), a.snapshotCmd(), a.verifyCmd())
	return cmd
}

func (a *app) operatorInit() *cobra.Command {
	var so server.StoreOptions
	var suffix, out, outSecret, caFile string
	var skipInitialised bool
	var port int
	c := &cobra.Command{
		Use:   "init",
		Short: "Create the first tenant and administrator in a new data directory (server stopped)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "dns-suffix"); err != nil {
				return err
			}
			if err := so.Validate(); err != nil {
				return optionError(err, storeFlags)
			}
			dataDir := so.DataDir
			if so.Storage == server.StorageEtcd {
				dataDir = "the store at " + strings.Join(so.Etcd.Endpoints, ",")
			}
			if (out == "") == (outSecret == "") {
				return usagef("give one of --out (a file) and --out-secret (namespace/name of a Kubernetes Secret) for the administrator's credentials")
			}
			secretNS, secretName, ok := strings.Cut(outSecret, "/")
			if outSecret != "" && (!ok || secretNS == "" || secretName == "") {
				return usagef("--out-secret %q must be namespace/name", outSecret)
			}
			ep, err := endpoint.New(suffix, port)
			if err != nil {
				return usagef("%v", err)
			}
			st, err := server.OpenStore(c.Context(), so, nil, a.logger(false))
			if err != nil {
				return optionError(err, storeFlags)
			}
			defer st.Close()
			// Replicas that start together on a new shared store (their
			// init containers) take turns: the first bootstraps and stores
			// the credentials, and the next finds both done. Its writes are
			// fenced: a run whose turn has ended cannot write any more.
			turn, endTurn := context.WithCancel(c.Context())
			defer endTurn()
			ctx, err := st.Leader.Lead(turn, "bootstrap")
			if err != nil {
				return err
			}
			roles, err := rbac.Open(ctx, st.Barrier, nil)
			if err != nil {
				return err
			}
			auth, err := authority.Open(ctx, st.Barrier, authority.Config{Host: ep.AuthorityURL(), Resources: []string{ep.Resource()}, Roles: roles}, nil)
			if err != nil {
				return err
			}
			if prev, ok, err := bootstrap.Load(ctx, st.Barrier); err != nil {
				return err
			} else if ok {
				if !skipInitialised {
					return fmt.Errorf("%s is already initialised; an administrator can reset its secret with `coffer sp credential reset`", dataDir)
				}
				if outSecret == "" {
					fmt.Fprintf(a.stdout, "%s is already initialised; nothing to do.\n", dataDir)
					return nil
				}
				// An earlier run may have initialised the store and then
				// failed to store the credentials: then they exist nowhere,
				// and a new administrator secret replaces them.
				missing, err := credentialsSecretMissing(ctx, secretNS, secretName)
				if err != nil {
					return err
				}
				if !missing {
					fmt.Fprintf(a.stdout, "%s is already initialised and Secret %s exists; nothing to do.\n", dataDir, outSecret)
					return nil
				}
				secret, err := auth.AddClientSecret(ctx, prev.TenantID, prev.AdminAppID, true)
				if err != nil {
					return err
				}
				env := devenv.Env{TenantID: prev.TenantID, ClientID: prev.AdminAppID, ClientSecret: secret, AuthorityHost: ep.AuthorityURL() + "/", CAFile: caFile, CABundle: caFile}
				if err := writeCredentialsSecret(ctx, secretNS, secretName, env); err != nil {
					return fmt.Errorf("storing the administrator's new credentials in Secret %s: %w", outSecret, err)
				}
				fmt.Fprintf(a.stdout, "%s is already initialised, but Secret %s was missing: the administrator's secret was replaced and stored there.\n", dataDir, outSecret)
				return nil
			}
			state, secret, err := bootstrap.Ensure(ctx, st.Barrier, auth, roles)
			if err != nil {
				return err
			}
			abs, _ := filepath.Abs(dataDir)
			env := devenv.Env{TenantID: state.TenantID, ClientID: state.AdminAppID, ClientSecret: secret,
				AuthorityHost: ep.AuthorityURL() + "/", CAFile: caFile, CABundle: caFile, DataDir: abs}
			if outSecret != "" {
				env.DataDir = ""
				if err := writeCredentialsSecret(ctx, secretNS, secretName, env); err != nil {
					return fmt.Errorf("initialised, but the administrator's credentials could not be stored (reset them with `coffer sp credential reset` from inside the server's pod): %w", err)
				}
				fmt.Fprintf(a.stdout, "Initialised. Tenant %s, administrator %s; credentials stored in Secret %s (key dev.env).\n", state.TenantID, state.AdminAppID, outSecret)
				return nil
			}
			if err := env.Write(out); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Initialised. Tenant %s, administrator %s; credentials written to %s (mode 0600).\n", state.TenantID, state.AdminAppID, out)
			return nil
		},
	}
	bindStoreFlags(c, &so)
	c.Flags().StringVar(&suffix, "dns-suffix", "", "DNS suffix the server will use")
	c.Flags().IntVar(&port, "public-port", 443, "HTTPS port clients will use")
	c.Flags().StringVar(&out, "out", "", "file to write the administrator's credentials to")
	c.Flags().StringVar(&outSecret, "out-secret", "", "namespace/name of a Kubernetes Secret to store the administrator's credentials in (key dev.env), from inside a cluster")
	c.Flags().BoolVar(&skipInitialised, "skip-if-initialised", false, "succeed without changes when the data directory is already initialised (for init containers)")
	c.Flags().StringVar(&caFile, "ca-file", "", "CA certificate clients should trust, recorded in the credentials file")
	return c
}

// storeFlags names the flag of each store option, for its errors.
var storeFlags = map[string]string{
	"Storage": "--storage", "DataDir": "--data-dir", "RootKeyFile": "--root-key-file", "EtcdEndpoints": "--etcd-endpoints",
	"EtcdMaxTxnOps": "--etcd-max-txn-ops", "EtcdMaxRequestBytes": "--etcd-max-request-bytes", "EtcdViewBytes": "--etcd-view-bytes",
}

// bindStoreFlags binds the flags that say which store to open, shared by
// `coffer server` and the operator's offline commands.
func bindStoreFlags(c *cobra.Command, o *server.StoreOptions) {
	f := c.Flags()
	f.StringVar(&o.Storage, "storage", server.StorageBolt, "storage engine: bolt (embedded, one replica) or etcd (shared by any number of replicas)")
	f.StringVar(&o.DataDir, "data-dir", "", "directory of the embedded store (bolt), and of the audit log by default")
	f.StringVar(&o.RootKeyFile, "root-key-file", "", "file holding the root key (default: $"+rootkey.EnvVar+")")
	f.StringSliceVar(&o.Etcd.Endpoints, "etcd-endpoints", nil, "etcd client URLs, comma-separated, such as https://etcd-0.etcd:2379 (with --storage etcd)")
	f.StringVar(&o.Etcd.CAFile, "etcd-ca-file", "", "PEM CA that signs the etcd members' certificates")
	f.StringVar(&o.Etcd.CertFile, "etcd-cert-file", "", "PEM client certificate for etcd")
	f.StringVar(&o.Etcd.KeyFile, "etcd-key-file", "", "PEM private key of the etcd client certificate")
	f.StringVar(&o.Etcd.Prefix, "etcd-prefix", "/coffer/", "key prefix of this installation in etcd, so several can share a cluster")
	f.IntVar(&o.Etcd.MaxTxnOps, "etcd-max-txn-ops", 0, "the etcd cluster's --max-txn-ops (0: etcd's default, 128); larger objects are written in fewer transactions")
	f.IntVar(&o.Etcd.MaxRequestBytes, "etcd-max-request-bytes", 0, "the etcd cluster's --max-request-bytes (0: etcd's default, 1.5 MiB)")
	f.IntVar(&o.Etcd.ViewBytes, "etcd-view-bytes", 0, "bytes of values each replica holds in memory, the most recently used (0: 64 MiB); every key is held regardless")
}

func (a *app) generateRootKey() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use: "generate-root-key", Short: "Generate a root key (printed, or written to --out with mode 0600)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			k := rootkey.Generate()
			if out == "" {
				fmt.Fprintln(a.stdout, k.Encode())
				return nil
			}
			if err := rootkey.WriteFile(out, k); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "root key %s written to %s\n", k.ID(), out)
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "file to write the key to")
	return c
}

func (a *app) rotateRootKey() *cobra.Command {
	var newKeyFile, dataDir, keyFile string
	c := &cobra.Command{
		Use:   "rotate-root-key",
		Short: "Re-wrap the data keys with a new root key, online (or offline with --data-dir)",
		Long: `Re-wrap the data keys with a new root key. Stored values are not rewritten.

Online (default): asks the running server. A server with a root key file
generates the new key and replaces the file crash-safely. A server that reads
COFFER_ROOT_KEY needs --new-root-key-file; update the variable before its next
restart.

Offline (--data-dir): the server must be stopped.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var provided *rootkey.Key
			if newKeyFile != "" {
				k, err := rootkey.ReadFile(newKeyFile)
				if err != nil {
					return err
				}
				provided = &k
			}
			if dataDir != "" {
				st, err := server.OpenStore(c.Context(), server.StoreOptions{DataDir: dataDir, RootKeyFile: keyFile}, nil, a.logger(false))
				if err != nil {
					return err
				}
				defer st.Close()
				id, err := st.RotateRootKey(c.Context(), provided)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "root key rotated offline; new root key id %s\n", id)
				return nil
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			in := mgmthttp.RotateRootKeyIn{}
			if provided != nil {
				in.NewRootKey = provided.Encode()
			}
			var out mgmthttp.RootKeyRotation
			if err := cl.Manage(c.Context(), "POST", "operator/rotate-root-key", in, &out); err != nil {
				return err
			}
			msg := "root key rotated; new root key id " + out.RootKeyID
			if out.FromEnv {
				msg += "; set " + rootkey.EnvVar + " to the new key before the server restarts"
			}
			fmt.Fprintln(a.stdout, msg)
			return nil
		},
	}
	c.Flags().StringVar(&newKeyFile, "new-root-key-file", "", "new root key (default: the server generates one)")
	c.Flags().StringVar(&dataDir, "data-dir", "", "rotate offline in this data directory (server stopped)")
	c.Flags().StringVar(&keyFile, "root-key-file", "", "with --data-dir: the current root key file (default: $"+rootkey.EnvVar+")")
	return c
}

func (a *app) rotateDataKey() *cobra.Command {
	return &cobra.Command{
		Use: "rotate-data-key", Short: "Start sealing new writes with a fresh data key (online)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out struct {
				ActiveTerm uint32 `json:"activeTerm"`
			}
			if err := cl.Manage(c.Context(), "POST", "operator/rotate-data-key", nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "data key rotated; active term %d\n", out.ActiveTerm)
			return nil
		},
	}
}

func (a *app) rotateSigningKey() *cobra.Command {
	return &cobra.Command{
		Use: "rotate-signing-key", Short: "Start signing tokens with a new key; old keys stay in JWKS until their tokens expire", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var out struct {
				KID string `json:"kid"`
			}
			if err := cl.Manage(c.Context(), "POST", "operator/rotate-signing-key", nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "signing key rotated; new kid %s\n", out.KID)
			return nil
		},
	}
}

// credentialsSecretMissing reports whether the credentials Secret does not
// exist yet.
func credentialsSecretMissing(ctx context.Context, ns, name string) (bool, error) {
	rc, err := kubeConfig("")
	if err != nil {
		return false, err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = cs.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading Secret %s/%s: %w", ns, name, err)
	}
	return false, nil
}

// writeCredentialsSecret stores the administrator's env file in a Secret,
// with the in-cluster credentials of the pod running the command. An
// existing Secret is never overwritten: it may hold the only copy of
// another installation's credentials.
func writeCredentialsSecret(ctx context.Context, ns, name string, env devenv.Env) error {
	rc, err := kubeConfig("")
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "coffer"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"dev.env": env.Bytes()},
	}, metav1.CreateOptions{})
	return err
}
