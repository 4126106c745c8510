// Package azparams reads the Azure Key Vault provider's parameter surface:
// the SecretProviderClass parameters and volume attributes the CSI driver
// sends in a mount request, with the Azure provider's names, defaults,
// precedence and validation, so existing SecretProviderClasses work with
// only their vault and tenant changed.
package azparams

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/cofferhq/coffer/internal/node/atomicdir"
)

// ErrInvalid wraps every refusal; the message says what is wrong.
var ErrInvalid = errors.New("invalid parameters")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Keys of the attributes map.
const (
	KeyVaultName      = "keyvaultName"
	KeyVaultURL       = "vaultURL" // Coffer: one class's vault base URL
	KeyTenantID       = "tenantID"
	KeyTenantIDOld    = "tenantId"
	KeyCloudName      = "cloudName"
	KeyUsePodIdentity = "usePodIdentity"
	KeyUseVMIdentity  = "useVMManagedIdentity"
	// KeyLastKnownGood is Coffer's: see Mount.LastKnownGood.
	KeyLastKnownGood     = "lastKnownGood"
	KeyUserAssignedID    = "userAssignedIdentityID"
	KeyClientID          = "clientID"
	KeyObjects           = "objects"
	KeyPodName           = "csi.storage.k8s.io/pod.name"
	KeyPodNamespace      = "csi.storage.k8s.io/pod.namespace"
	KeyPodUID            = "csi.storage.k8s.io/pod.uid"
	KeyServiceAccount    = "csi.storage.k8s.io/serviceAccount.name"
	KeyServiceAcctTokens = "csi.storage.k8s.io/serviceAccount.tokens"
	// TokenAudience is the audience of the service-account token that
	// workload identity exchanges.
	TokenAudience = "api://AzureADTokenExchange"
)

// AuthMode is how the provider proves an identity to the vault.
type AuthMode int

// Auth modes, in Azure's order of precedence.
const (
	PodIdentity AuthMode = iota + 1
	VMManagedIdentity
	WorkloadIdentity
	ServicePrincipal
)

func (m AuthMode) String() string {
	return [...]string{"", "pod identity", "VM managed identity", "workload identity", "service principal"}[m]
}

// Auth is the identity a mount uses.
type Auth struct {
	Mode AuthMode
	// ClientID: the workload identity's client id, the service principal's
	// id, or the user-assigned identity's client id ("" for the node's
	// system-assigned identity).
	ClientID string
	Secret   string // service principal only
	// Token is the pod's service-account token: workload identity's
	// proof, and pod identity's when the driver passes one.
	Token string
}

// Object is one entry of the objects parameter.
type Object struct {
	Name     string `yaml:"objectName"`
	Alias    string `yaml:"objectAlias"`
	Type     string `yaml:"objectType"`
	Version  string `yaml:"objectVersion"`
	History  int32  `yaml:"objectVersionHistory"`
	Format   string `yaml:"objectFormat"`
	Encoding string `yaml:"objectEncoding"`
	FilePerm string `yaml:"filePermission"`
	// Optional is Coffer's: a missing object (or version) is left out of
	// the volume instead of failing the mount. The Azure provider ignores
	// the field, so classes that use it stay portable.
	Optional bool        `yaml:"optional"`
	Mode     fs.FileMode `yaml:"-"`
}

// FileName is where the object goes in the volume: its alias, else its
// name.
func (o Object) FileName() string {
	if o.Alias != "" {
		return o.Alias
	}
	return o.Name
}

// Object types.
const (
	TypeSecret = "secret"
	TypeKey    = "key"
	TypeCert   = "cert"
)

// Mount is a parsed mount request.
type Mount struct {
	VaultName string
	VaultURL  string // set only by the vaultURL parameter
	TenantID  string
	Auth      Auth
	Objects   []Object
	PodName   string
	PodNS     string
	PodUID    string
	// ServiceAccount is the pod's service account.
	ServiceAccount string
	// LastKnownGood (Coffer's lastKnownGood parameter) lets a mount that
	// cannot reach the vault or the authority get the files that the same
	// identity last mounted with the same class on this node.
	LastKnownGood bool
}

// Parse reads a mount request's attributes (JSON map), secrets (the
// nodePublishSecretRef data, JSON map or null) and default file permission
// (a decimal JSON number).
func Parse(attributes, secrets, permission string) (*Mount, error) {
	var attrs map[string]string
	if err := json.Unmarshal([]byte(attributes), &attrs); err != nil {
		return nil, invalid("failed to unmarshal attributes: %v", err)
	}
	for k, v := range attrs {
		attrs[k] = strings.TrimSpace(v)
	}
	var sec map[string]string
	if secrets != "" {
		if err := json.Unmarshal([]byte(secrets), &sec); err != nil {
			return nil, invalid("failed to unmarshal secrets: %v", err)
		}
	}
	defaultMode := fs.FileMode(0o644)
	if permission != "" {
		var p uint32
		if err := json.Unmarshal([]byte(permission), &p); err != nil || p > 0o777 {
			return nil, invalid("the file permission %q is not a decimal mode from 0 to 511", permission)
		}
		defaultMode = fs.FileMode(p)
	}
	m := &Mount{VaultName: attrs[KeyVaultName], VaultURL: attrs[KeyVaultURL], TenantID: attrs[KeyTenantID],
		PodName: attrs[KeyPodName], PodNS: attrs[KeyPodNamespace], PodUID: attrs[KeyPodUID], ServiceAccount: attrs[KeyServiceAccount]}
	if m.TenantID == "" {
		m.TenantID = attrs[KeyTenantIDOld]
	}
	switch {
	case m.VaultName == "" && m.VaultURL == "":
		return nil, invalid("keyvaultName is not set: name the vault in the SecretProviderClass parameters")
	case m.TenantID == "":
		return nil, invalid("tenantId is not set: give the vault's tenant id in the SecretProviderClass parameters")
	}
	if m.VaultName != "" && !validVaultName(m.VaultName) {
		return nil, invalid("keyvaultName %q is not a vault name: 3-24 letters, digits and hyphens", m.VaultName)
	}
	var err error
	if m.Auth, err = parseAuth(attrs, sec); err != nil {
		return nil, err
	}
	if m.Objects, err = ParseObjects(attrs[KeyObjects], defaultMode); err != nil {
		return nil, err
	}
	if m.LastKnownGood, err = parseBool(attrs, KeyLastKnownGood); err != nil {
		return nil, err
	}
	if m.LastKnownGood && m.Auth.Mode != WorkloadIdentity && m.Auth.Mode != ServicePrincipal {
		// Pod and VM identity are decided by the node agent from the
		// pod's labels and bindings, which the node cannot check without
		// the authority: stored files would go to any pod that asked.
		return nil, invalid("lastKnownGood works with workload identity (clientID) or a nodePublishSecretRef service principal, whose identity the node knows without the vault; not with %s", m.Auth.Mode)
	}
	if m.LastKnownGood && m.Auth.Mode == WorkloadIdentity && (m.PodNS == "" || m.ServiceAccount == "") {
		return nil, invalid("lastKnownGood with workload identity needs the pod's namespace and service account: the CSIDriver must have podInfoOnMount: true")
	}
	return m, nil
}

func validVaultName(s string) bool {
	if len(s) < 3 || len(s) > 24 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func parseBool(attrs map[string]string, key string) (bool, error) {
	v := attrs[key]
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, invalid("%s %q is not a boolean: use \"true\" or \"false\"", key, v)
	}
	return b, nil
}

// parseAuth applies Azure's precedence: pod identity, then VM managed
// identity, then workload identity (clientID with a service-account token),
// then a service principal from nodePublishSecretRef.
func parseAuth(attrs, sec map[string]string) (Auth, error) {
	pod, err := parseBool(attrs, KeyUsePodIdentity)
	if err != nil {
		return Auth{}, err
	}
	vm, err := parseBool(attrs, KeyUseVMIdentity)
	if err != nil {
		return Auth{}, err
	}
	switch {
	case pod && vm:
		return Auth{}, invalid("cannot enable both usePodIdentity and useVMManagedIdentity")
	case pod:
		// The pod's token, when the driver has one, lets the node agent
		// check the pod itself rather than trust the provider's word.
		tok, _ := serviceAccountToken(attrs[KeyServiceAcctTokens])
		return Auth{Mode: PodIdentity, Token: tok}, nil
	case vm:
		return Auth{Mode: VMManagedIdentity, ClientID: attrs[KeyUserAssignedID]}, nil
	}
	if id := attrs[KeyClientID]; id != "" {
		tok, err := serviceAccountToken(attrs[KeyServiceAcctTokens])
		if err != nil {
			return Auth{}, err
		}
		return Auth{Mode: WorkloadIdentity, ClientID: id, Token: tok}, nil
	}
	if sec == nil {
		return Auth{}, invalid("no identity is configured: set clientID (workload identity), usePodIdentity or useVMManagedIdentity, or give a nodePublishSecretRef Secret with clientid and clientsecret")
	}
	var id, secret string
	for k, v := range sec {
		switch strings.ToLower(k) {
		case "clientid":
			id = strings.TrimSpace(v)
		case "clientsecret":
			secret = strings.TrimSpace(v)
		}
	}
	switch {
	case id == "":
		return Auth{}, invalid("could not find clientid in the nodePublishSecretRef Secret")
	case secret == "":
		return Auth{}, invalid("could not find clientsecret in the nodePublishSecretRef Secret")
	}
	return Auth{Mode: ServicePrincipal, ClientID: id, Secret: secret}, nil
}

// serviceAccountToken picks the workload-identity token from the driver's
// tokens attribute: {"api://AzureADTokenExchange":{"token":"...","expirationTimestamp":"..."}}.
func serviceAccountToken(raw string) (string, error) {
	if raw == "" {
		return "", invalid("clientID is set but no service-account token came with the request: the CSIDriver %s needs tokenRequests with audience %s", "secrets-store.csi.k8s.io", TokenAudience)
	}
	var tokens map[string]struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return "", invalid("the service-account tokens attribute is not JSON: %v", err)
	}
	t := tokens[TokenAudience].Token
	if t == "" {
		return "", invalid("no service-account token for audience %s: add it to the CSIDriver's tokenRequests", TokenAudience)
	}
	return t, nil
}

// ParseObjects reads the objects parameter: a YAML mapping whose "array"
// is a list of YAML strings, each one object.
func ParseObjects(raw string, defaultMode fs.FileMode) ([]Object, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, invalid("objects is not set: list the vault objects to mount")
	}
	var outer struct {
		Array []string `yaml:"array"`
	}
	if err := yaml.Unmarshal([]byte(raw), &outer); err != nil {
		return nil, invalid("objects is not the expected YAML (a mapping with an 'array' of YAML strings): %v", err)
	}
	if len(outer.Array) == 0 {
		return nil, invalid("objects has an empty array: list at least one object")
	}
	out := make([]Object, 0, len(outer.Array))
	files := map[string]int{}
	for i, s := range outer.Array {
		var o Object
		if err := yaml.Unmarshal([]byte(s), &o); err != nil {
			return nil, invalid("objects array entry %d does not parse: %v", i, err)
		}
		o.Name, o.Alias, o.Type, o.Version = strings.TrimSpace(o.Name), strings.TrimSpace(o.Alias), strings.TrimSpace(o.Type), strings.TrimSpace(o.Version)
		o.Format, o.Encoding, o.FilePerm = strings.TrimSpace(o.Format), strings.TrimSpace(o.Encoding), strings.TrimSpace(o.FilePerm)
		if err := o.validate(defaultMode); err != nil {
			return nil, invalid("objects[%d] (objectType %s, objectName %s): %v", i, o.Type, o.Name, err)
		}
		if j, dup := files[o.FileName()]; dup {
			return nil, invalid("objects[%d] and objects[%d] both write the file %q: give one an objectAlias", j, i, o.FileName())
		}
		files[o.FileName()] = i
		out = append(out, o)
	}
	return out, nil
}

func (o *Object) validate(defaultMode fs.FileMode) error {
	switch o.Type {
	case TypeSecret, TypeKey, TypeCert:
	default:
		return fmt.Errorf("objectType %q is not one of secret, key, cert", o.Type)
	}
	if o.Name == "" {
		return errors.New("objectName is empty")
	}
	switch strings.ToLower(o.Format) {
	case "", "pem":
	case "pfx":
		if o.Type != TypeSecret {
			return errors.New("objectFormat pfx is supported only for objectType secret")
		}
	default:
		return fmt.Errorf("objectFormat %q is not one of pem, pfx", o.Format)
	}
	switch strings.ToLower(o.Encoding) {
	case "", "utf-8", "base64", "hex":
		if o.Encoding != "" && o.Type != TypeSecret {
			return errors.New("objectEncoding is supported only for objectType secret")
		}
	default:
		return fmt.Errorf("objectEncoding %q is not one of utf-8, base64, hex", o.Encoding)
	}
	if strings.EqualFold(o.Version, "latest") {
		o.Version = ""
	}
	o.Mode = defaultMode
	if o.FilePerm != "" {
		p, err := strconv.ParseUint(o.FilePerm, 8, 32)
		if err != nil || p > 0o777 {
			return fmt.Errorf("filePermission %q is not an octal mode such as 0440", o.FilePerm)
		}
		o.Mode = fs.FileMode(p)
	}
	if o.History < 0 {
		return fmt.Errorf("objectVersionHistory %d is negative", o.History)
	}
	if o.History > 100 {
		return fmt.Errorf("objectVersionHistory %d is over 100", o.History)
	}
	name := o.FileName()
	switch {
	case strings.HasPrefix(name, "/") || path.IsAbs(name):
		return fmt.Errorf("file name %q must be a relative path", name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("file name %q must not contain '..'", name)
	case strings.ContainsRune(name, 0) || strings.Contains(name, "\\"):
		return fmt.Errorf("file name %q must not contain NUL or a backslash", name)
	case name == ".":
		return fmt.Errorf("file name %q is the volume itself: give a file name", name)
	case path.Clean(name) != name:
		return fmt.Errorf("file name %q is not a clean path", name)
	}
	// The volume writer's own rule, so that a name it would refuse fails
	// here, naming the object, rather than after the vault was read.
	if err := atomicdir.ValidatePath(name); err != nil {
		return fmt.Errorf("file name %q cannot be written in the volume: %v", name, err)
	}
	return nil
}
