// Package flexvol rewrites workloads that mount the Azure Key Vault
// FlexVolume (flexVolume.driver: azure/kv, a driver retired with
// FlexVolume itself) into the Secrets Store CSI driver's form: a
// SecretProviderClass per volume, and a csi volume that names it. The
// objects keep their files: the CSI provider writes each object under its
// alias or name, as the FlexVolume did.
//
// The conversion works on the YAML documents as maps, not typed objects,
// so that fields this package knows nothing of pass through untouched.
// Documents without such a volume are copied byte for byte.
package flexvol

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/cofferhq/coffer/internal/node/azparams"
)

// Driver is the FlexVolume driver name this package converts.
const Driver = "azure/kv"

// CSIDriver is the Secrets Store CSI driver's name.
const CSIDriver = "secrets-store.csi.k8s.io"

// MaxDocument bounds one YAML document, so that a wrong file (a binary, a
// dump) fails with a message instead of filling memory.
const MaxDocument = 4 << 20

// Note is one thing the conversion could not carry over, or something the
// user must still do, for one field of one object.
type Note struct {
	// Object is "Kind namespace/name" (or "Kind name").
	Object string
	// Field is the path of the field, such as
	// spec.template.spec.volumes[kv].flexVolume.options.resourcegroup.
	Field string
	// Message says what happened and what to do.
	Message string
}

func (n Note) String() string { return n.Object + ": " + n.Field + ": " + n.Message }

// podSpecPaths are where each workload kind keeps its pod spec.
var podSpecPaths = map[string][]string{
	"Pod":                   {"spec"},
	"Deployment":            {"spec", "template", "spec"},
	"StatefulSet":           {"spec", "template", "spec"},
	"DaemonSet":             {"spec", "template", "spec"},
	"ReplicaSet":            {"spec", "template", "spec"},
	"ReplicationController": {"spec", "template", "spec"},
	"Job":                   {"spec", "template", "spec"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template", "spec"},
}

// Convert reads YAML documents from r and writes them to w, each workload
// with azure/kv FlexVolumes preceded by the SecretProviderClasses its new
// csi volumes name (so that `kubectl apply -f` creates them first). It
// returns the notes, in document order; an error is a document that is
// not YAML, or a write that failed.
func Convert(r io.Reader, w io.Writer) ([]Note, error) {
	var notes []Note
	dr := utilyaml.NewYAMLReader(bufio.NewReaderSize(r, 64<<10))
	first := true
	for i := 1; ; i++ {
		doc, err := dr.Read()
		if errors.Is(err, io.EOF) {
			return notes, nil
		}
		if err != nil {
			return notes, fmt.Errorf("document %d: %w", i, err)
		}
		if len(doc) > MaxDocument {
			return notes, fmt.Errorf("document %d is %d bytes, more than the %d a manifest may have", i, len(doc), MaxDocument)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		out, n, err := convertDoc(doc)
		if err != nil {
			return notes, fmt.Errorf("document %d: %w", i, err)
		}
		notes = append(notes, n...)
		for _, o := range out {
			if !first {
				if _, err := io.WriteString(w, "---\n"); err != nil {
					return notes, err
				}
			}
			first = false
			if _, err := w.Write(o); err != nil {
				return notes, err
			}
		}
	}
}

// stripComments drops comment lines, to tell an empty document.
func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// convertDoc converts one document; out are the documents to write.
func convertDoc(doc []byte) (out [][]byte, notes []Note, err error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, nil, err
	}
	keep := [][]byte{withNewline(doc)}
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	id := kind + " " + name
	if ns != "" {
		id = kind + " " + ns + "/" + name
	}
	path, ok := podSpecPaths[kind]
	if !ok {
		if kind == "List" && bytes.Contains(doc, []byte(Driver)) {
			notes = append(notes, Note{id, "items", "a List is not converted: give its items as separate documents"})
		}
		return keep, notes, nil
	}
	spec := obj
	for _, k := range path {
		spec, _ = spec[k].(map[string]any)
	}
	vols, _ := spec["volumes"].([]any)
	if name == "" {
		if gen, _ := meta["generateName"].(string); gen != "" {
			name = strings.TrimSuffix(gen, "-")
		}
	}
	field := strings.Join(path, ".") + ".volumes"
	var classes [][]byte
	changed := false
	for i, v := range vols {
		vol, _ := v.(map[string]any)
		fv, _ := vol["flexVolume"].(map[string]any)
		if fv == nil || fv["driver"] != Driver {
			continue
		}
		volName, _ := vol["name"].(string)
		vf := fmt.Sprintf("%s[%s]", field, volName)
		if name == "" {
			notes = append(notes, Note{id, "metadata.name", "the object has no name to name its SecretProviderClass after: not converted"})
			continue
		}
		spc, csi, n := convertVolume(id, vf, name+"-"+volName, ns, fv)
		notes = append(notes, n...)
		if spc == nil {
			continue
		}
		b, err := yaml.Marshal(spc)
		if err != nil {
			return nil, nil, err
		}
		classes = append(classes, b)
		vols[i] = map[string]any{"name": volName, "csi": csi}
		changed = true
	}
	if !changed {
		return keep, notes, nil
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		return nil, nil, err
	}
	return append(classes, b), notes, nil
}

func withNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return append(b, '\n')
	}
	return b
}

// convertVolume converts one FlexVolume; spc is nil when it cannot be.
func convertVolume(id, field, className, ns string, fv map[string]any) (spc, csi map[string]any, notes []Note) {
	note := func(f, format string, args ...any) {
		notes = append(notes, Note{id, field + f, fmt.Sprintf(format, args...)})
	}
	opts := map[string]string{}
	raw, _ := fv["options"].(map[string]any)
	for k, v := range raw {
		s, ok := v.(string)
		if !ok {
			// FlexVolume options are strings; YAML gave a number or a
			// boolean, which the kubelet would have refused too.
			s = fmt.Sprint(v)
		}
		opts[strings.ToLower(k)] = strings.TrimSpace(s)
	}
	params := map[string]string{}
	get := func(keys ...string) (string, string) {
		for _, k := range keys {
			if v, ok := opts[k]; ok {
				return v, k
			}
		}
		return "", keys[0]
	}
	used := map[string]bool{}
	take := func(keys ...string) (string, string) {
		for _, k := range keys {
			used[k] = true
		}
		return get(keys...)
	}

	vault, k := take("keyvaultname")
	if vault == "" {
		note(".flexVolume.options."+k, "empty or missing: fill in keyvaultName in the SecretProviderClass %s", className)
	}
	params[azparams.KeyVaultName] = vault
	tenant, k := take("tenantid")
	if tenant == "" {
		note(".flexVolume.options."+k, "empty or missing: fill in tenantID (Coffer's tenant, which `coffer operator init` prints) in the SecretProviderClass %s", className)
	}
	params[azparams.KeyTenantID] = tenant
	if cloud, _ := take("cloudname"); cloud != "" {
		params[azparams.KeyCloudName] = cloud
	}

	objects, objNotes := objectsParam(take)
	for _, n := range objNotes {
		note(".flexVolume.options."+n[0], "%s", n[1])
	}
	if objects == "" {
		return nil, nil, notes
	}
	params[azparams.KeyObjects] = objects

	flag := func(keys ...string) bool {
		v, k := take(keys...)
		if v == "" {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			note(".flexVolume.options."+k, "%q is not true or false: taken as false", v)
			return false
		}
		return b
	}
	// useintegratedid is the first releases' name for pod identity.
	pod := flag("usepodidentity", "useintegratedid")
	vm := flag("usevmmanagedidentity")
	clientID, _ := take("vmmanagedidentityclientid")
	secretRef, _ := fv["secretRef"].(map[string]any)
	secretName, _ := secretRef["name"].(string)
	csi = map[string]any{
		"driver":           CSIDriver,
		"readOnly":         true,
		"volumeAttributes": map[string]any{"secretProviderClass": className},
	}
	switch {
	case pod && vm:
		note(".flexVolume.options", "both usepodidentity and usevmmanagedidentity are true; the provider refuses that: keep one in the SecretProviderClass %s", className)
		params[azparams.KeyUsePodIdentity] = "true"
		params[azparams.KeyUseVMIdentity] = "true"
	case pod:
		params[azparams.KeyUsePodIdentity] = "true"
	case vm:
		params[azparams.KeyUseVMIdentity] = "true"
		if clientID != "" {
			params[azparams.KeyUserAssignedID] = clientID
		}
	}
	switch {
	case (pod || vm) && secretName != "":
		note(".flexVolume.secretRef", "not carried over: with %s the service principal Secret %s is unused", map[bool]string{true: "pod identity", false: "the VM's managed identity"}[pod], secretName)
	case secretName != "":
		// The CSI provider reads the same clientid and clientsecret keys
		// from the nodePublishSecretRef Secret.
		csi["nodePublishSecretRef"] = map[string]any{"name": secretName}
	case !pod && !vm:
		note(".flexVolume", "no identity: neither usepodidentity, usevmmanagedidentity nor a secretRef; the provider will refuse the mount until the SecretProviderClass %s has one (or clientID, for workload identity)", className)
	}
	if clientID != "" && !vm {
		note(".flexVolume.options.vmmanagedidentityclientid", "not carried over: it applies with usevmmanagedidentity only")
	}

	for _, k := range []string{"resourcegroup", "subscriptionid"} {
		used[k] = true
		if v, ok := opts[k]; ok && v != "" {
			note(".flexVolume.options."+k, "dropped: the CSI provider finds the vault by keyvaultName and needs no %s", k)
		}
	}
	var unknown []string
	for k := range opts {
		if !used[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		note(".flexVolume.options."+k, "unknown option, not mapped: set its equivalent in the SecretProviderClass %s by hand, if it has one", className)
	}
	if v, ok := fv["readOnly"].(bool); ok && !v {
		note(".flexVolume.readOnly", "false is not possible: secrets-store volumes are read-only (set readOnly: true on the volume mounts that write there)")
	}
	if v, _ := fv["fsType"].(string); v != "" {
		note(".flexVolume.fsType", "dropped: the CSI driver mounts a tmpfs")
	}

	meta := map[string]any{"name": className}
	if ns != "" {
		meta["namespace"] = ns
	}
	pm := map[string]any{}
	for k, v := range params {
		pm[k] = v
	}
	spc = map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1",
		"kind":       "SecretProviderClass",
		"metadata":   meta,
		"spec":       map[string]any{"provider": "azure", "parameters": pm},
	}
	return spc, csi, notes
}

// objectsParam builds the objects parameter from the ;-separated lists;
// it is empty when they cannot make one. Notes are [option, message].
func objectsParam(take func(...string) (string, string)) (string, [][2]string) {
	var notes [][2]string
	names, nk := take("keyvaultobjectnames", "keyvaultobjectname")
	types, tk := take("keyvaultobjecttypes", "keyvaultobjecttype")
	versions, vk := take("keyvaultobjectversions", "keyvaultobjectversion")
	aliases, ak := take("keyvaultobjectaliases", "alias")
	if names == "" {
		return "", [][2]string{{nk, "empty or missing: no object to mount; the volume is not converted (list the objects, ;-separated)"}}
	}
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		parts := strings.Split(s, ";")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts
	}
	n, t, v, a := split(names), split(types), split(versions), split(aliases)
	for _, l := range []struct {
		key   string
		parts []string
		need  bool
	}{{tk, t, true}, {vk, v, false}, {ak, a, false}} {
		if len(l.parts) == len(n) || (!l.need && len(l.parts) == 0) {
			continue
		}
		notes = append(notes, [2]string{l.key, fmt.Sprintf("has %d entries for %d object names (%s): the volume is not converted; give one per name, ;-separated", len(l.parts), len(n), nk)})
	}
	if len(notes) > 0 {
		return "", notes
	}
	var b strings.Builder
	b.WriteString("array:\n")
	for i, name := range n {
		if name == "" {
			return "", [][2]string{{nk, fmt.Sprintf("entry %d is empty: the volume is not converted", i+1)}}
		}
		switch t[i] {
		case azparams.TypeSecret, azparams.TypeKey, azparams.TypeCert:
		default:
			notes = append(notes, [2]string{tk, fmt.Sprintf("entry %d %q is not secret, key or cert: the provider will refuse it", i+1, t[i])})
		}
		o := map[string]string{"objectName": name, "objectType": t[i]}
		if len(v) > 0 && v[i] != "" {
			o["objectVersion"] = v[i]
		}
		if len(a) > 0 && a[i] != "" {
			o["objectAlias"] = a[i]
		}
		y, err := yaml.Marshal(o)
		if err != nil {
			return "", [][2]string{{nk, err.Error()}}
		}
		b.WriteString("  - |\n")
		for _, line := range strings.Split(strings.TrimRight(string(y), "\n"), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	return b.String(), notes
}
