package flexvol

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	secretsstorev1 "sigs.k8s.io/secrets-store-csi-driver/apis/v1"

	"github.com/cofferhq/coffer/internal/node/azparams"
)

// convert runs Convert on a testdata file.
func convert(t *testing.T, name string) (out []byte, notes []string) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b bytes.Buffer
	ns, err := Convert(f, &b)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		notes = append(notes, n.String())
	}
	return b.Bytes(), notes
}

// decode decodes every output document strictly (an unknown or
// duplicated field is an error) with client-go's scheme and the Secrets
// Store CSI driver's own API types.
func decode(t *testing.T, out []byte) []runtime.Object {
	t.Helper()
	s := runtime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := secretsstorev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	ser := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{Yaml: true, Strict: true})
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufioReader(out))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		o, _, err := ser.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("output document does not decode: %v\n%s", err, doc)
		}
		objs = append(objs, o)
	}
	return objs
}

// mount checks an SPC the way Coffer's provider reads it at mount time
// (the same parameter parser), with the volume's nodePublishSecretRef
// data standing in as the Secret's content.
func mount(t *testing.T, spc *secretsstorev1.SecretProviderClass, withSecret bool) (*azparams.Mount, error) {
	t.Helper()
	attrs := map[string]string{}
	for k, v := range spc.Spec.Parameters {
		attrs[k] = v
	}
	attrs[azparams.KeyPodName], attrs[azparams.KeyPodNamespace] = "p", "ns"
	a, _ := json.Marshal(attrs)
	sec := ""
	if withSecret {
		sec = `{"clientid":"00000000-0000-0000-0000-000000000001","clientsecret":"not-a-real-secret"}`
	}
	return azparams.Parse(string(a), sec, "")
}

func wantNotes(t *testing.T, name string, got []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".notes"))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(want) == 1 && want[0] == "" {
		want = nil
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("notes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func classes(objs []runtime.Object) map[string]*secretsstorev1.SecretProviderClass {
	m := map[string]*secretsstorev1.SecretProviderClass{}
	for _, o := range objs {
		if spc, ok := o.(*secretsstorev1.SecretProviderClass); ok {
			m[spc.Name] = spc
		}
	}
	return m
}

// csiVolume checks that a converted volume is the CSI driver's, read-only,
// naming class, and returns it.
func csiVolume(t *testing.T, spec corev1.PodSpec, name, class string) *corev1.CSIVolumeSource {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name != name {
			continue
		}
		if v.FlexVolume != nil || v.CSI == nil {
			t.Fatalf("volume %s is not a csi volume: %+v", name, v.VolumeSource)
		}
		if v.CSI.Driver != CSIDriver || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly || v.CSI.VolumeAttributes["secretProviderClass"] != class {
			t.Errorf("volume %s: %+v", name, v.CSI)
		}
		return v.CSI
	}
	t.Fatalf("no volume %s", name)
	return nil
}

// The README's service-principal Pod: one object with its alias and
// version, the Secret as nodePublishSecretRef, resourcegroup and
// subscriptionid reported as dropped.
func TestServicePrincipalPod(t *testing.T) {
	out, notes := convert(t, "sp-pod")
	wantNotes(t, "sp-pod", notes)
	objs := decode(t, out)
	if len(objs) != 2 {
		t.Fatalf("%d objects, want the class and the Pod", len(objs))
	}
	spc, ok := objs[0].(*secretsstorev1.SecretProviderClass)
	if !ok || spc.Name != "nginx-flex-kv-test" || spc.Spec.Provider != "azure" {
		t.Fatalf("first object: %#v", objs[0])
	}
	m, err := mount(t, spc, true)
	if err != nil {
		t.Fatal(err)
	}
	if m.VaultName != "testkeyvault" || m.TenantID != "testtenant" || m.Auth.Mode != azparams.ServicePrincipal || len(m.Objects) != 1 {
		t.Fatalf("mount: %+v", m)
	}
	if o := m.Objects[0]; o.Name != "testsecret" || o.Type != "secret" || o.Version != "testversion" || o.FileName() != "secret.json" {
		t.Errorf("object: %+v", o)
	}
	pod := objs[1].(*corev1.Pod)
	v := csiVolume(t, pod.Spec, "test", "nginx-flex-kv-test")
	if v.NodePublishSecretRef == nil || v.NodePublishSecretRef.Name != "kvcreds" {
		t.Errorf("nodePublishSecretRef: %+v", v.NodePublishSecretRef)
	}
	if m := pod.Spec.Containers[0].VolumeMounts; len(m) != 1 || m[0].MountPath != "/kvmnt" || !m[0].ReadOnly {
		t.Errorf("the mounts changed: %+v", m)
	}
	if _, err := mount(t, spc, false); err == nil {
		t.Error("without the Secret the provider would mount with no identity")
	}
}

// The README's pod-identity Pod: three objects of three types, a version
// on the last only, the class in the Pod's namespace, the label kept.
func TestPodIdentityPod(t *testing.T) {
	out, notes := convert(t, "podidentity-pod")
	wantNotes(t, "podidentity-pod", notes)
	objs := decode(t, out)
	spc := classes(objs)["nginx-flex-kv-podid-test"]
	if spc == nil || spc.Namespace != "team-a" {
		t.Fatalf("class: %+v", spc)
	}
	m, err := mount(t, spc, false)
	if err != nil {
		t.Fatal(err)
	}
	if m.Auth.Mode != azparams.PodIdentity || len(m.Objects) != 3 {
		t.Fatalf("mount: %+v", m)
	}
	for i, want := range []azparams.Object{{Name: "db-password", Type: "secret"}, {Name: "tls-cert", Type: "cert"}, {Name: "signing-key", Type: "key", Version: "0123456789abcdef0123456789abcdef"}} {
		if o := m.Objects[i]; o.Name != want.Name || o.Type != want.Type || o.Version != want.Version || o.Alias != "" {
			t.Errorf("object %d: %+v, want %+v", i, o, want)
		}
	}
	pod := objs[1].(*corev1.Pod)
	if pod.Labels["aadpodidbinding"] != "team-a-identity" || pod.Namespace != "team-a" {
		t.Errorf("pod metadata: %+v", pod.ObjectMeta)
	}
	if v := csiVolume(t, pod.Spec, "test", "nginx-flex-kv-podid-test"); v.NodePublishSecretRef != nil {
		t.Error("pod identity needs no Secret")
	}
}

// deployment/'s Deployment: converted with its placeholders reported, its
// other volume and the Service after it untouched (byte for byte).
func TestDeployment(t *testing.T) {
	out, notes := convert(t, "deployment")
	wantNotes(t, "deployment", notes)
	objs := decode(t, out)
	if len(objs) != 3 {
		t.Fatalf("%d objects, want class, Deployment, Service", len(objs))
	}
	spc := objs[0].(*secretsstorev1.SecretProviderClass)
	objects, err := azparams.ParseObjects(spc.Spec.Parameters[azparams.KeyObjects], 0o644)
	if err != nil || len(objects) != 2 || objects[0].Name != "test1" || objects[1].Name != "test2" {
		t.Fatalf("objects %+v: %v", objects, err)
	}
	if _, err := mount(t, spc, true); err == nil || !strings.Contains(err.Error(), "keyvaultName is not set") {
		t.Errorf("the empty placeholder must still fail at mount time: %v", err)
	}
	d := objs[1].(*appsv1.Deployment)
	csiVolume(t, d.Spec.Template.Spec, "test", "nginx-flexkv-deployment-test")
	if d.Spec.Template.Spec.Volumes[1].EmptyDir == nil || *d.Spec.Replicas != 2 {
		t.Errorf("the rest of the Deployment changed: %+v", d.Spec)
	}
	src, _ := os.ReadFile("testdata/deployment.yaml")
	_, svc, _ := strings.Cut(string(src), "\n---\n")
	if !strings.HasSuffix(string(out), svc) {
		t.Errorf("the Service is not copied unchanged:\n%s", out)
	}
}

// Every other kind with a pod template; what cannot be converted stays
// as it was, and each reason is reported.
func TestOtherWorkloadsAndUnknownOptions(t *testing.T) {
	out, notes := convert(t, "vm-identity")
	wantNotes(t, "vm-identity", notes)
	objs := decode(t, out)
	cls := classes(objs)
	if len(cls) != 3 {
		t.Errorf("classes: %v", cls)
	}
	var kinds []string
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Pod:
			kinds = append(kinds, "Pod")
			if o.Spec.Volumes[0].FlexVolume == nil {
				t.Error("the Pod without object names was converted")
			}
		case *appsv1.StatefulSet:
			kinds = append(kinds, "StatefulSet")
			csiVolume(t, o.Spec.Template.Spec, "creds", "db-creds")
			if nfs := o.Spec.Template.Spec.Volumes[1]; nfs.FlexVolume == nil || nfs.FlexVolume.Driver != "example.com/nfs" {
				t.Errorf("another driver's FlexVolume changed: %+v", nfs)
			}
			spc := cls["db-creds"]
			if spc == nil || spc.Namespace != "data" {
				t.Fatalf("class db-creds: %+v", spc)
			}
			m, err := mount(t, spc, false)
			if err != nil {
				t.Fatal(err)
			}
			if m.Auth.Mode != azparams.VMManagedIdentity || m.Auth.ClientID != "11111111-2222-3333-4444-555555555555" || spc.Spec.Parameters[azparams.KeyCloudName] != "AzurePublicCloud" {
				t.Errorf("mount %+v, parameters %v", m, spc.Spec.Parameters)
			}
		case *appsv1.DaemonSet:
			kinds = append(kinds, "DaemonSet")
			if o.Spec.Template.Spec.Volumes[0].FlexVolume == nil {
				t.Error("the DaemonSet with mismatched lists was converted")
			}
		case *batchv1.Job:
			kinds = append(kinds, "Job")
			csiVolume(t, o.Spec.Template.Spec, "kv", "migrate-db-kv")
			m, err := azparams.ParseObjects(cls["migrate-db-kv"].Spec.Parameters[azparams.KeyObjects], 0o644)
			if err != nil || m[0].Name != "migration-token" {
				t.Errorf("the singular option names: %+v %v", m, err)
			}
		case *batchv1.CronJob:
			kinds = append(kinds, "CronJob")
			csiVolume(t, o.Spec.JobTemplate.Spec.Template.Spec, "kv", "report-kv")
			if _, err := mount(t, cls["report-kv"], false); err == nil || !strings.Contains(err.Error(), `objectType "secrets"`) {
				t.Errorf("the wrong type must fail at mount time as reported: %v", err)
			}
		case *secretsstorev1.SecretProviderClass:
		default:
			t.Errorf("unexpected %T", o)
		}
	}
	if strings.Join(kinds, " ") != "Pod StatefulSet DaemonSet Job CronJob" {
		t.Errorf("kinds in order: %v", kinds)
	}
}

// A document that is not YAML is an error naming it; empty documents and
// comments are skipped.
func TestBadInput(t *testing.T) {
	var b bytes.Buffer
	_, err := Convert(strings.NewReader("# nothing\n---\nkind: Pod\nmetadata: [\n"), &b)
	if err == nil || !strings.Contains(err.Error(), "document 2") {
		t.Errorf("got %v", err)
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
