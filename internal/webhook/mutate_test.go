package webhook

import (
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	testClientID  = "11111111-2222-3333-4444-555555555555"
	testTenant    = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
	saTenant      = "99999999-8888-7777-6666-555555555555"
	testAuthority = "https://login.coffer.test/"
)

var testConfig = Config{TenantID: testTenant, AuthorityHost: testAuthority}

// testPod is a labelled pod running as service account "app" with
// containers "app" and "sidecar"; edit adjusts it.
func testPod(edit ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{UseLabel: "true"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "app",
			Containers:         []corev1.Container{{Name: "app", Image: "app"}, {Name: "sidecar", Image: "proxy"}},
		},
	}
	for _, e := range edit {
		e(p)
	}
	return p
}

func testSA(ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "ns", Annotations: ann}}
}

var annotatedSA = testSA(map[string]string{ClientIDAnnotation: testClientID})

func annotate(k, v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[k] = v
	}
}

// full is what an injected container gets from annotatedSA and testConfig.
var full = map[string]string{EnvClientID: testClientID, EnvTenantID: testTenant, EnvTokenFile: TokenFile, EnvAuthorityHost: testAuthority}

// outcome describes a mutated pod: per container, the AZURE_* variables
// and whether the token is mounted (nil: not injected at all).
type outcome struct {
	env        map[string]map[string]string // container -> AZURE_* name -> value
	expiration int64                        // of the token volume; 0: no volume
	warnings   []string                     // substrings, one per warning, in order
}

func TestMutate(t *testing.T) {
	for name, c := range map[string]struct {
		pod  *corev1.Pod
		sa   *corev1.ServiceAccount
		cfg  Config
		want outcome
	}{
		"not labelled": {
			pod:  testPod(func(p *corev1.Pod) { p.Labels = nil }),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": nil, "sidecar": nil}},
		},
		"labelled false": {
			pod:  testPod(func(p *corev1.Pod) { p.Labels[UseLabel] = "false" }),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": nil, "sidecar": nil}},
		},
		"labelled": {
			pod:  testPod(),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 3600},
		},
		"service account tenant wins over the default": {
			pod: testPod(),
			sa:  testSA(map[string]string{ClientIDAnnotation: testClientID, TenantIDAnnotation: saTenant}),
			want: outcome{env: map[string]map[string]string{
				"app":     with(full, EnvTenantID, saTenant),
				"sidecar": with(full, EnvTenantID, saTenant),
			}, expiration: 3600},
		},
		"skip-containers": {
			pod:  testPod(annotate(SkipContainersAnnotation, " sidecar ;typo;")),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": nil}, expiration: 3600, warnings: []string{`"typo", which the pod does not have`}},
		},
		"every container skipped: no volume": {
			pod:  testPod(annotate(SkipContainersAnnotation, "app;sidecar")),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": nil, "sidecar": nil}},
		},
		"init containers": {
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "db"}, {Name: "skipped", Image: "x"}}
				p.Annotations = map[string]string{SkipContainersAnnotation: "skipped"}
			}),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"migrate": full, "skipped": nil, "app": full, "sidecar": full}, expiration: 3600},
		},
		"existing env kept": {
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: EnvClientID, Value: "mine-do-not-echo"}, {Name: "OTHER", Value: "x"}}
				p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: EnvAuthorityHost, ValueFrom: &corev1.EnvVarSource{
					ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}, Key: "k"}}}}
			}),
			sa: annotatedSA,
			want: outcome{env: map[string]map[string]string{
				"app":     with(full, EnvClientID, "mine-do-not-echo"),
				"sidecar": with(full, EnvAuthorityHost, ""), // valueFrom, kept
			}, expiration: 3600, warnings: []string{`"app" already sets AZURE_CLIENT_ID`, `"sidecar" already sets AZURE_AUTHORITY_HOST`}},
		},
		"existing env with the injected value: no warning": {
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: EnvTokenFile, Value: TokenFile}}
			}),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 3600},
		},
		"expiration from the service account": {
			pod:  testPod(),
			sa:   testSA(map[string]string{ClientIDAnnotation: testClientID, ExpirationAnnotation: "7200"}),
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 7200},
		},
		"pod expiration wins over the service account's": {
			pod:  testPod(annotate(ExpirationAnnotation, "86400")),
			sa:   testSA(map[string]string{ClientIDAnnotation: testClientID, ExpirationAnnotation: "7200"}),
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 86400},
		},
		"pod expiration wins over an invalid one on the service account": {
			pod:  testPod(annotate(ExpirationAnnotation, "3600")),
			sa:   testSA(map[string]string{ClientIDAnnotation: testClientID, ExpirationAnnotation: "soon"}),
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 3600},
		},
		"missing client-id": {
			pod: testPod(),
			sa:  testSA(nil),
			want: outcome{env: map[string]map[string]string{"app": without(full, EnvClientID), "sidecar": without(full, EnvClientID)}, expiration: 3600,
				warnings: []string{`service account "app" has no azure.workload.identity/client-id annotation: AZURE_CLIENT_ID not injected`}},
		},
		"service account not found": {
			pod: testPod(),
			want: outcome{env: map[string]map[string]string{"app": without(full, EnvClientID), "sidecar": without(full, EnvClientID)}, expiration: 3600,
				warnings: []string{`service account "app" not found: AZURE_CLIENT_ID not injected`}},
		},
		"default service account": {
			pod:  testPod(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "" }),
			want: outcome{env: map[string]map[string]string{"app": without(full, EnvClientID), "sidecar": without(full, EnvClientID)}, expiration: 3600, warnings: []string{`service account "default" not found`}},
		},
		"no tenant anywhere": {
			pod: testPod(),
			sa:  annotatedSA,
			cfg: Config{AuthorityHost: testAuthority},
			want: outcome{env: map[string]map[string]string{"app": without(full, EnvTenantID), "sidecar": without(full, EnvTenantID)}, expiration: 3600,
				warnings: []string{"no tenant: service account \"app\" has no azure.workload.identity/tenant-id annotation and the webhook no --tenant-id"}},
		},
		"something else mounted at the token directory": {
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: TokenDir}}
			}),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, expiration: 3600, warnings: []string{`"app" already mounts volume "mine"`}},
		},
		"a volume of the token's name that is not the token": {
			pod: testPod(func(p *corev1.Pod) {
				p.Spec.Volumes = []corev1.Volume{{Name: TokenVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			}),
			sa:   annotatedSA,
			want: outcome{env: map[string]map[string]string{"app": full, "sidecar": full}, warnings: []string{`already has a volume "azure-identity-token"`}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := c.cfg
			if cfg == (Config{}) {
				cfg = testConfig
			}
			in := c.pod.DeepCopy()
			got, warnings, err := Mutate(c.pod, c.sa, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(in, c.pod) {
				t.Fatal("Mutate modified its argument")
			}
			checkOutcome(t, got, warnings, c.want)
			for _, w := range warnings {
				if strings.Contains(w, "mine-do-not-echo") {
					t.Errorf("a warning echoes an env value: %s", w)
				}
			}

			// Idempotence: the apiserver may call again with the result.
			again, warnings2, err := Mutate(got, c.sa, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Errorf("a second Mutate changed the pod:\nfirst  %+v\nsecond %+v", got.Spec, again.Spec)
			}
			if !slices.Equal(warnings2, warnings) {
				t.Errorf("a second Mutate warned %q, the first %q", warnings2, warnings)
			}
		})
	}
}

func TestMutateRefusesInvalidExpiration(t *testing.T) {
	for name, c := range map[string]struct {
		pod     *corev1.Pod
		sa      *corev1.ServiceAccount
		mention []string
	}{
		"pod, not a number": {testPod(annotate(ExpirationAnnotation, "1h")), annotatedSA, []string{"pod annotation", ExpirationAnnotation, `"1h"`, "3600 to 86400"}},
		"pod, too short":    {testPod(annotate(ExpirationAnnotation, "3599")), annotatedSA, []string{"pod annotation", `"3599"`, "3600 to 86400"}},
		"pod, too long":     {testPod(annotate(ExpirationAnnotation, "86401")), annotatedSA, []string{`"86401"`}},
		"pod, negative":     {testPod(annotate(ExpirationAnnotation, "-3600")), annotatedSA, []string{`"-3600"`}},
		"service account": {testPod(), testSA(map[string]string{ExpirationAnnotation: "600"}),
			[]string{`service account "app" annotation`, ExpirationAnnotation, `"600"`, "3600 to 86400"}},
	} {
		t.Run(name, func(t *testing.T) {
			got, warnings, err := Mutate(c.pod, c.sa, testConfig)
			if !errors.Is(err, ErrInvalidAnnotation) || got != nil || warnings != nil {
				t.Fatalf("Mutate = %v, %q, %v; want ErrInvalidAnnotation", got, warnings, err)
			}
			for _, m := range c.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %s", err, m)
				}
			}
		})
	}
	// An unlabelled pod is none of the webhook's business, whatever its
	// annotations say.
	p := testPod(annotate(ExpirationAnnotation, "1h"), func(p *corev1.Pod) { p.Labels = nil })
	if _, _, err := Mutate(p, annotatedSA, testConfig); err != nil {
		t.Fatalf("unlabelled pod refused: %v", err)
	}
}

func checkOutcome(t *testing.T, got *corev1.Pod, warnings []string, want outcome) {
	t.Helper()
	containers := append(slices.Clone(got.Spec.InitContainers), got.Spec.Containers...)
	if len(containers) != len(want.env) {
		t.Fatalf("%d containers, want %d", len(containers), len(want.env))
	}
	for _, ctr := range containers {
		wantEnv, ok := want.env[ctr.Name]
		if !ok {
			t.Fatalf("unexpected container %q", ctr.Name)
		}
		gotEnv := map[string]string{}
		for _, e := range ctr.Env {
			if strings.HasPrefix(e.Name, "AZURE_") {
				if _, dup := gotEnv[e.Name]; dup {
					t.Errorf("container %q: %s twice", ctr.Name, e.Name)
				}
				gotEnv[e.Name] = e.Value
			}
		}
		if !maps.Equal(gotEnv, wantEnv) && (len(gotEnv) > 0 || len(wantEnv) > 0) {
			t.Errorf("container %q env %v, want %v", ctr.Name, gotEnv, wantEnv)
		}
		mounted := 0
		for _, m := range ctr.VolumeMounts {
			if m.Name == TokenVolume {
				mounted++
				if m.MountPath != TokenDir || !m.ReadOnly {
					t.Errorf("container %q mount %+v", ctr.Name, m)
				}
			}
		}
		if wantMount := wantEnv != nil && !hasOtherMount(ctr); (mounted == 1) != wantMount || mounted > 1 {
			t.Errorf("container %q: token mounted %d times, want mounted=%v", ctr.Name, mounted, wantMount)
		}
	}
	var vols []corev1.Volume
	for _, v := range got.Spec.Volumes {
		if v.Name == TokenVolume {
			vols = append(vols, v)
		}
	}
	switch {
	case want.expiration == 0 && len(vols) == 1 && vols[0].Projected != nil:
		t.Errorf("a token volume was added: %+v", vols[0])
	case want.expiration == 0:
	case len(vols) != 1 || vols[0].Projected == nil || len(vols[0].Projected.Sources) != 1 || vols[0].Projected.Sources[0].ServiceAccountToken == nil:
		t.Errorf("token volumes %+v, want one projected service account token", vols)
	default:
		tok := vols[0].Projected.Sources[0].ServiceAccountToken
		if tok.Audience != TokenAudience || tok.Path != TokenPath || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != want.expiration {
			t.Errorf("token projection %+v (expiration %v), want %s %s %d", tok, tok.ExpirationSeconds, TokenAudience, TokenPath, want.expiration)
		}
	}
	if len(warnings) != len(want.warnings) {
		t.Fatalf("warnings %q, want %d matching %q", warnings, len(want.warnings), want.warnings)
	}
	for i, w := range want.warnings {
		if !strings.Contains(warnings[i], w) {
			t.Errorf("warning %d is %q, want it to contain %q", i, warnings[i], w)
		}
	}
}

func hasOtherMount(c corev1.Container) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == TokenDir && m.Name != TokenVolume {
			return true
		}
	}
	return false
}

func with(m map[string]string, k, v string) map[string]string {
	out := maps.Clone(m)
	out[k] = v
	return out
}

func without(m map[string]string, k string) map[string]string {
	out := maps.Clone(m)
	delete(out, k)
	return out
}
