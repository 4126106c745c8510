{{/* The server's storage, probes and pod template. */}}

{{/*
The storage engine, checked: bolt or etcd, and what each needs. A render
that would start replicas the engine cannot serve fails here, so no
install ever runs two writers on one bolt file.
*/}}
{{- define "coffer.storage" -}}
{{- $s := .Values.server.storage -}}
{{- if not (has $s.type (list "bolt" "etcd")) -}}
{{- fail (printf "server.storage.type %q is not an engine: use bolt (embedded, one replica) or etcd (shared, any number of replicas)" $s.type) -}}
{{- end -}}
{{- $replicas := include "coffer.int" (list "server.replicas" .Values.server.replicas) | int -}}
{{- if and (eq $s.type "bolt") (gt $replicas 1) -}}
{{- fail (printf "server.replicas is %d, but server.storage.type bolt (the embedded store) has one writer: use 1 replica, or server.storage.type etcd for several" $replicas) -}}
{{- end -}}
{{- if and (eq $s.type "etcd") (empty $s.etcd.endpoints) -}}
{{- fail "server.storage.etcd.endpoints is required with server.storage.type etcd: the members' client URLs, such as https://etcd-0.etcd:2379" -}}
{{- end -}}
{{- $s.type -}}
{{- end -}}

{{/* The flags that open the store, shared by operator init and the server. */}}
{{- define "coffer.storageArgs" -}}
{{- $s := .Values.server.storage -}}
{{- if eq (include "coffer.storage" .) "etcd" }}
- --storage=etcd
- --etcd-endpoints={{ join "," $s.etcd.endpoints }}
- --etcd-prefix={{ $s.etcd.prefix }}
{{- with $s.etcd.viewBytes }}
- --etcd-view-bytes={{ include "coffer.int" (list "server.storage.etcd.viewBytes" .) }}
{{- end }}
{{- with $s.etcd.maxTxnOps }}
- --etcd-max-txn-ops={{ include "coffer.int" (list "server.storage.etcd.maxTxnOps" .) }}
{{- end }}
{{- with $s.etcd.maxRequestBytes }}
- --etcd-max-request-bytes={{ include "coffer.int" (list "server.storage.etcd.maxRequestBytes" .) }}
{{- end }}
{{- if $s.etcd.tls.secretName }}
- --etcd-ca-file=/etc/coffer/etcd/ca.crt
- --etcd-cert-file=/etc/coffer/etcd/tls.crt
- --etcd-key-file=/etc/coffer/etcd/tls.key
{{- end }}
{{- else }}
- --storage=bolt
{{- end }}
{{- end -}}

{{- define "coffer.etcdTLSMount" -}}
{{- if and (eq (include "coffer.storage" .) "etcd") .Values.server.storage.etcd.tls.secretName }}
- name: etcd-tls
  mountPath: /etc/coffer/etcd
  readOnly: true
{{- end }}
{{- end -}}

{{- define "coffer.etcdTLSVolume" -}}
{{- $tls := .Values.server.storage.etcd.tls -}}
{{- if and (eq (include "coffer.storage" .) "etcd") $tls.secretName }}
- name: etcd-tls
  secret:
    secretName: {{ $tls.secretName }}
    items:
      - {key: {{ $tls.caKey }}, path: ca.crt}
      - {key: {{ $tls.certKey }}, path: tls.crt}
      - {key: {{ $tls.keyKey }}, path: tls.key}
{{- end }}
{{- end -}}

{{/*
Spread replicas over podAntiAffinityTopologyKey, unless server.affinity
says otherwise; one replica needs no spreading.
*/}}
{{- define "coffer.serverAffinity" -}}
{{- $v := .Values.server -}}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if gt (int $v.replicas) 1 }}
{{- $term := dict "labelSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" "coffer" "app.kubernetes.io/instance" .Release.Name "app.kubernetes.io/component" "server")) "topologyKey" $v.podAntiAffinityTopologyKey }}
{{- if eq $v.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          {{- toYaml $term | nindent 10 }}
{{- else if eq $v.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - {{- toYaml $term | nindent 8 }}
{{- else if ne $v.podAntiAffinity "none" }}
{{- fail (printf "server.podAntiAffinity %q: use soft, hard or none" $v.podAntiAffinity) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Liveness asks the HTTPS listener's /healthz, which answers while the
process serves: a replica cut off from its store is not restarted, which
would not help. Readiness follows the store: the status listener's
/healthz (or, with it off, /readyz on the HTTPS listener) fails while the
replica cannot reach its store or open the shared keyring, so no request
is sent to it then. The status listener is used when it can be, because
the HTTPS listener records every request but /healthz in the audit log.
An IP address as the Host is the authority's host, which serves both.
*/}}
{{- define "coffer.serverProbes" -}}
{{- $listen := split ":" .Values.server.listen -}}
{{- $status := split ":" .Values.server.metricsAddr -}}
livenessProbe:
  httpGet:
    {{- with $listen._0 }}
    host: {{ . }}
    {{- end }}
    path: /healthz
    port: https
    scheme: HTTPS
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    {{- if $status._1 }}
    {{- with $status._0 }}
    host: {{ . }}
    {{- end }}
    path: /healthz
    port: {{ include "coffer.int" (list "server.metricsAddr's port" $status._1) }}
    {{- else }}
    {{- with $listen._0 }}
    host: {{ . }}
    {{- end }}
    path: /readyz
    port: https
    scheme: HTTPS
    {{- end }}
  periodSeconds: 5
  # The replica gives its store 3 s to answer.
  timeoutSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* The server's pod template, for the Deployment (bolt) or the StatefulSet (etcd). */}}
{{- define "coffer.serverPod" -}}
{{- $etcd := eq (include "coffer.storage" .) "etcd" -}}
metadata:
  labels:
    {{- include "coffer.selector" . | nindent 4 }}
    app.kubernetes.io/component: server
spec:
  serviceAccountName: {{ include "coffer.name" . }}-server
  hostNetwork: {{ .Values.server.hostNetwork }}
  # The image is Linux-only: keep off Windows nodes of a mixed cluster.
  nodeSelector:
    {{- toYaml (merge (dict "kubernetes.io/os" "linux") (.Values.server.nodeSelector | default dict)) | nindent 4 }}
  {{- with .Values.server.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- include "coffer.serverAffinity" . | nindent 2 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    fsGroup: 65532
  initContainers:
    # On a new store, creates the first tenant and administrator and
    # stores its credentials; on later starts, does nothing. Replicas that
    # start together take turns (an election in the store), so only the
    # first bootstraps and the others find its work done.
    - name: init
      image: {{ include "coffer.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - operator
        - init
        {{- include "coffer.storageArgs" . | nindent 8 }}
        {{- if not $etcd }}
        - --data-dir=/data
        {{- end }}
        - --dns-suffix={{ include "coffer.dnsSuffix" . }}
        - --public-port={{ .Values.server.publicPort }}
        - --out-secret={{ .Release.Namespace }}/{{ .Values.server.adminSecretName }}
        - --skip-if-initialised
      env:
        {{- include "coffer.rootKeyEnv" . | nindent 8 }}
        {{- include "coffer.apiEnv" . | nindent 8 }}
      securityContext:
        {{- include "coffer.securityContext" . | nindent 8 }}
      volumeMounts:
        {{- if not $etcd }}
        - name: data
          mountPath: /data
        {{- end }}
        {{- include "coffer.etcdTLSMount" . | nindent 8 }}
  containers:
    - name: server
      image: {{ include "coffer.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - server
        {{- include "coffer.storageArgs" . | nindent 8 }}
        - --data-dir=/data
        - --dns-suffix={{ include "coffer.dnsSuffix" . }}
        - --listen={{ .Values.server.listen }}
        - --public-port={{ .Values.server.publicPort }}
        - --tls-cert-file=/etc/coffer/tls/tls.crt
        - --tls-key-file=/etc/coffer/tls/tls.key
        - --metrics-addr={{ .Values.server.metricsAddr }}
        - --audit-max-size-mb={{ int .Values.server.audit.maxSizeMB }}
        - --audit-max-files={{ int .Values.server.audit.maxFiles }}
        {{- if .Values.server.federationCA.configMap }}
        - --federation-ca-file=/etc/coffer/federation/{{ .Values.server.federationCA.key }}
        {{- end }}
        {{- if .Values.server.allowPrivateIssuers }}
        - --allow-private-issuers
        {{- end }}
      env:
        {{- include "coffer.rootKeyEnv" . | nindent 8 }}
      ports:
        - name: https
          containerPort: {{ include "coffer.int" (list "server.listen's port" (split ":" .Values.server.listen)._1) }}
      {{- include "coffer.serverProbes" . | nindent 6 }}
      securityContext:
        {{- include "coffer.securityContext" . | nindent 8 }}
      {{- with .Values.server.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: tls
          mountPath: /etc/coffer/tls
          readOnly: true
        {{- include "coffer.etcdTLSMount" . | nindent 8 }}
        {{- if .Values.server.federationCA.configMap }}
        - name: federation
          mountPath: /etc/coffer/federation
          readOnly: true
        {{- end }}
  volumes:
    {{- if not (and $etcd .Values.server.persistence.enabled) }}
    - name: data
      {{- if .Values.server.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "coffer.name" . }}-server-data
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
    - name: tls
      secret:
        secretName: {{ .Values.server.tls.secretName }}
    {{- include "coffer.etcdTLSVolume" . | nindent 4 }}
    {{- if .Values.server.federationCA.configMap }}
    - name: federation
      configMap:
        name: {{ .Values.server.federationCA.configMap }}
    {{- end }}
{{- end -}}
