package webhook

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Config is what the webhook knows that no pod or service account says.
type Config struct {
	// TenantID is AZURE_TENANT_ID for service accounts without a
	// TenantIDAnnotation. Empty: such pods get no AZURE_TENANT_ID, and a
	// warning.
	TenantID string

	// AuthorityHost is AZURE_AUTHORITY_HOST: Coffer's authority URL, which
	// replaces https://login.microsoftonline.com/ for the SDKs.
	AuthorityHost string
}

// Enabled reports whether pod asked for workload identity.
func Enabled(pod *corev1.Pod) bool { return pod.Labels[UseLabel] == "true" }

// ServiceAccountName is the service account a pod runs as. A pod that names
// none runs as "default"; the ServiceAccount admission plugin would fill
// that in, but it may run after this webhook or not at all.
func ServiceAccountName(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	return "default"
}

// Mutate returns a copy of pod with workload identity injected, and the
// warnings to show whoever created it. pod is not modified.
//
// sa is the pod's service account, nil when it does not exist. A missing
// service account is not an error: the pod may be created before its
// service account (kubectl apply of one manifest does that), so it is
// injected with everything but AZURE_CLIENT_ID and the warning says why.
//
// Pods without UseLabel = "true" are returned unchanged, without warnings.
// Mutate is idempotent: given a pod it returned, it returns the same pod
// and no warning about what it injected itself, so reinvocation by the
// apiserver is harmless. It returns an error wrapping ErrInvalidAnnotation
// when the pod must be refused.
func Mutate(pod *corev1.Pod, sa *corev1.ServiceAccount, cfg Config) (*corev1.Pod, []string, error) {
	out := pod.DeepCopy()
	if !Enabled(pod) {
		return out, nil, nil
	}
	expiration, err := tokenExpiration(pod, sa)
	if err != nil {
		return nil, nil, err
	}
	env, warnings := identityEnv(pod, sa, cfg)

	skip, unknown := skipped(pod)
	for _, name := range unknown {
		warnings = append(warnings, fmt.Sprintf("%s names container %q, which the pod does not have", SkipContainersAnnotation, name))
	}
	injected := 0
	for _, list := range [][]corev1.Container{out.Spec.InitContainers, out.Spec.Containers} {
		for i := range list {
			c := &list[i]
			if skip[c.Name] {
				continue
			}
			injected++
			warnings = append(warnings, injectEnv(c, env)...)
			warnings = append(warnings, injectMount(c)...)
		}
	}
	// A token that no container mounts would still be requested by the
	// kubelet for nothing.
	if injected > 0 {
		warnings = append(warnings, injectVolume(out, expiration)...)
	}
	return out, warnings, nil
}

// identityEnv is the environment to inject, in a fixed order, and the
// warnings about what could not be known.
func identityEnv(pod *corev1.Pod, sa *corev1.ServiceAccount, cfg Config) ([]corev1.EnvVar, []string) {
	var warnings []string
	var clientID, tenantID string
	name := ServiceAccountName(pod)
	switch {
	case sa == nil:
		warnings = append(warnings, fmt.Sprintf("service account %q not found: %s not injected", name, EnvClientID))
	case sa.Annotations[ClientIDAnnotation] == "":
		warnings = append(warnings, fmt.Sprintf("service account %q has no %s annotation: %s not injected", name, ClientIDAnnotation, EnvClientID))
	default:
		clientID = sa.Annotations[ClientIDAnnotation]
	}
	if sa != nil {
		tenantID = sa.Annotations[TenantIDAnnotation]
	}
	if tenantID == "" {
		tenantID = cfg.TenantID
	}
	if tenantID == "" {
		warnings = append(warnings, fmt.Sprintf("no tenant: service account %q has no %s annotation and the webhook no --tenant-id: %s not injected",
			name, TenantIDAnnotation, EnvTenantID))
	}
	var env []corev1.EnvVar
	for _, e := range []corev1.EnvVar{
		{Name: EnvClientID, Value: clientID},
		{Name: EnvTenantID, Value: tenantID},
		{Name: EnvTokenFile, Value: TokenFile},
		{Name: EnvAuthorityHost, Value: cfg.AuthorityHost},
	} {
		if e.Value != "" {
			env = append(env, e)
		}
	}
	return env, warnings
}

// skipped parses SkipContainersAnnotation. unknown lists, in the
// annotation's order, names that match no container or init container: a
// typo there would otherwise inject a sidecar silently.
func skipped(pod *corev1.Pod) (skip map[string]bool, unknown []string) {
	skip = map[string]bool{}
	exists := map[string]bool{}
	for _, c := range pod.Spec.InitContainers {
		exists[c.Name] = true
	}
	for _, c := range pod.Spec.Containers {
		exists[c.Name] = true
	}
	for _, name := range strings.Split(pod.Annotations[SkipContainersAnnotation], ";") {
		name = strings.TrimSpace(name)
		if name == "" || skip[name] {
			continue
		}
		skip[name] = true
		if !exists[name] {
			unknown = append(unknown, name)
		}
	}
	return skip, unknown
}

// injectEnv appends each variable of env that c does not define. A
// variable c already defines keeps its value: the pod's author said so. The
// warning names the variable, never a value; a variable that already holds
// exactly what would be injected (this webhook's own earlier work) is not
// worth one.
func injectEnv(c *corev1.Container, env []corev1.EnvVar) []string {
	var warnings []string
	for _, e := range env {
		i := envIndex(c.Env, e.Name)
		if i < 0 {
			c.Env = append(c.Env, e)
			continue
		}
		if have := c.Env[i]; have.ValueFrom != nil || have.Value != e.Value {
			warnings = append(warnings, fmt.Sprintf("container %q already sets %s: kept its value", c.Name, e.Name))
		}
	}
	return warnings
}

func envIndex(env []corev1.EnvVar, name string) int {
	for i, e := range env {
		if e.Name == name {
			return i
		}
	}
	return -1
}

// injectMount mounts the token volume read-only at TokenDir, unless c
// already mounts something there: the apiserver rejects two mounts at one
// path, and the pod's author's wins.
func injectMount(c *corev1.Container) []string {
	for _, m := range c.VolumeMounts {
		if m.MountPath != TokenDir {
			continue
		}
		if m.Name == TokenVolume {
			return nil
		}
		return []string{fmt.Sprintf("container %q already mounts volume %q at %s: the token is not mounted", c.Name, m.Name, TokenDir)}
	}
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true})
	return nil
}

// injectVolume adds the projected token volume unless the pod has a
// volume of that name. One that is this webhook's (the apiserver asked
// again) is left as it is; another is the author's, kept, and warned about,
// because the containers will not find a token in it.
func injectVolume(pod *corev1.Pod, expiration int64) []string {
	for _, v := range pod.Spec.Volumes {
		if v.Name != TokenVolume {
			continue
		}
		if isTokenVolume(v) {
			return nil
		}
		return []string{fmt.Sprintf("the pod already has a volume %q that is not a projected %s token: kept it", TokenVolume, TokenAudience)}
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name: TokenVolume,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Path:              TokenPath,
				Audience:          TokenAudience,
				ExpirationSeconds: &expiration,
			}}},
		}},
	})
	return nil
}

func isTokenVolume(v corev1.Volume) bool {
	if v.Projected == nil {
		return false
	}
	for _, s := range v.Projected.Sources {
		if t := s.ServiceAccountToken; t != nil && t.Path == TokenPath && t.Audience == TokenAudience {
			return true
		}
	}
	return false
}
