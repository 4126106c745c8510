{{/* Names and shared fragments. */}}

{{- define "coffer.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "coffer.labels" -}}
app.kubernetes.io/name: coffer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "coffer.selector" -}}
app.kubernetes.io/name: coffer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The image: repository@digest when image.digest is set (pinned: a tag
replaced in the registry changes nothing), repository:tag otherwise.
*/}}
{{- define "coffer.image" -}}
{{- with .Values.image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" (toString .)) -}}
{{- fail (printf "image.digest %q is not an image digest: want sha256: and 64 lowercase hex digits (crane digest or docker buildx imagetools inspect print it)" (toString .)) -}}
{{- end -}}
{{ $.Values.image.repository }}@{{ . }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "coffer.dnsSuffix" -}}
{{- required "server.dnsSuffix is required: vaults are https://{vault}.{dnsSuffix}/" .Values.server.dnsSuffix -}}
{{- end -}}

{{- define "coffer.authorityHost" -}}
{{- if .Values.authority.host -}}
{{ .Values.authority.host }}
{{- else -}}
https://{{ include "coffer.dnsSuffix" . }}:{{ .Values.server.publicPort }}
{{- end -}}
{{- end -}}

{{- define "coffer.vaultSuffix" -}}
{{- if .Values.provider.vaultDNSSuffix -}}
{{ .Values.provider.vaultDNSSuffix }}
{{- else -}}
{{ include "coffer.dnsSuffix" . }}:{{ .Values.server.publicPort }}
{{- end -}}
{{- end -}}

{{- define "coffer.tenantID" -}}
{{- required "tenantID is required for the node agent and the webhook (coffer operator init prints it)" .Values.tenantID -}}
{{- end -}}

{{/* The authority's CA, mounted at /etc/coffer/ca/ca.crt. */}}
{{- define "coffer.caVolume" -}}
- name: coffer-ca
  configMap:
    name: {{ .Values.authority.caConfigMap }}
{{- end -}}

{{- define "coffer.caMount" -}}
- name: coffer-ca
  mountPath: /etc/coffer/ca
  readOnly: true
{{- end -}}

{{- define "coffer.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* KUBERNETES_SERVICE_HOST/_PORT overrides, under env:. */}}
{{- define "coffer.apiEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | default "443" | quote }}
{{- end }}
{{- end -}}

{{/*
The root key, from its Secret through the environment: a Secret volume's
files are group-readable under fsGroup, which the root-key loader refuses.
*/}}
{{- define "coffer.rootKeyEnv" -}}
- name: COFFER_ROOT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.server.rootKey.secretName }}
      key: {{ .Values.server.rootKey.key }}
{{- end -}}

{{- define "coffer.syncController" -}}
{{ include "coffer.name" . }}-sync-controller
{{- end -}}

{{/* The sync controller's token audiences, comma-separated. */}}
{{- define "coffer.syncAudiences" -}}
{{- $reqs := .Values.syncController.tokenRequests | default .Values.tokenRequests -}}
{{- $auds := list -}}
{{- range $reqs }}{{ $auds = append $auds .audience }}{{ end -}}
{{- join "," $auds -}}
{{- end -}}

{{/* The sync controller's user name, as admission sees it. */}}
{{- define "coffer.syncControllerUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "coffer.syncController" . }}
{{- end -}}

{{/*
coffer.int: (list NAME VALUE) renders VALUE as a whole number, or fails
naming NAME. sprig's int and int64 read anything else as 0 ("64Mi", "1e3x",
a typo in a port), which would change the setting without a word. YAML
numbers arrive as float64 and --set ones as int64; a Terraform `set` block
passes numbers as strings, so a string of digits is taken too.
*/}}
{{- define "coffer.int" -}}
{{- $name := index . 0 -}}
{{- $x := index . 1 -}}
{{- if or (kindIs "int" $x) (kindIs "int64" $x) -}}
{{- if lt (int64 $x) 0 -}}{{- fail (printf "%s is %d: give a whole number, 0 or more" $name (int64 $x)) -}}{{- end -}}
{{- int64 $x -}}
{{- else if kindIs "float64" $x -}}
{{- if or (lt $x 0.0) (ne (float64 (int64 $x)) $x) -}}{{- fail (printf "%s is %v: give a whole number, 0 or more" $name $x) -}}{{- end -}}
{{- int64 $x -}}
{{- else if and (kindIs "string" $x) (regexMatch "^(0|[1-9][0-9]*)$" $x) -}}
{{- int64 $x -}}
{{- else -}}
{{- fail (printf "%s is %s: give a whole number, such as 4194304 (not a quantity like 4Mi)" $name (toJson $x)) -}}
{{- end -}}
{{- end -}}
