{{/*
The Azure provider chart's names for the driver's values.

Values files and Terraform `set` blocks written for the Azure provider's
chart (csi-secrets-store-provider-azure) nest the upstream driver's values
under `secrets-store-csi-driver.`. Coffer's chart has one driver and reads
its own names; coffer.aliases copies each Azure name onto Coffer's before
anything reads it, so those files keep meaning what they said.

Both names set to different values is refused: the chart cannot know which
one the user meant. That is why the values below have no default in
values.yaml (null there): an explicit value must be told apart from the
chart's default. Their defaults are in coffer.defaults instead.

Every template includes coffer.aliases first; it is idempotent (a second
run finds each pair equal), so the order Helm renders files in does not
matter.
*/}}

{{/* The pairs: the Azure chart's name under secrets-store-csi-driver., Coffer's name, and "bool" for switches (a Terraform `set` with type string gives "true"). */}}
{{- define "coffer.aliasPairs" -}}
- [install, linux.enabled, bool]
- [linux.enabled, linux.enabled, bool]
- [linux.kubeletRootDir, linux.kubeletRootDir, ""]
- [linux.providersDir, linux.providersDir, ""]
- [linux.metricsAddr, linux.metricsAddr, ""]
- [linux.priorityClassName, linux.priorityClassName, ""]
- [linux.nodeSelector, linux.nodeSelector, ""]
- [linux.tolerations, linux.tolerations, ""]
- [linux.driver.resources, linux.resources, ""]
- [enableSecretRotation, enableSecretRotation, bool]
- [rotationPollInterval, rotationPollInterval, ""]
- [syncSecret.enabled, syncSecret.enabled, bool]
- [logVerbosity, logVerbosity, ""]
- [maxCallRecvMsgSize, maxCallRecvMsgSize, ""]
- [tokenRequests, tokenRequests, ""]
{{- end -}}

{{/* Defaults of the values that values.yaml leaves null (see above). */}}
{{- define "coffer.defaults" -}}
linux.enabled: true
linux.kubeletRootDir: /var/lib/kubelet
linux.providersDir: /var/run/secrets-store-csi-providers
linux.metricsAddr: ":8095"
enableSecretRotation: false
rotationPollInterval: 2m
syncSecret.enabled: false
logVerbosity: 0
maxCallRecvMsgSize: 4194304
tokenRequests:
  - audience: api://AzureADTokenExchange
{{- end -}}

{{/* isSet: a value counts as given unless it is absent, or an empty string, list or map (the defaults of the values that keep one in values.yaml). */}}
{{- define "coffer.isSet" -}}
{{- if kindIs "invalid" . -}}
{{- else if or (kindIs "bool" .) (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}true
{{- else if not (empty .) -}}true
{{- end -}}
{{- end -}}

{{- define "coffer.aliases" -}}
{{- $v := .Values -}}
{{- $up := index $v "secrets-store-csi-driver" -}}
{{- if and $up (not (kindIs "map" $up)) -}}
{{- fail "secrets-store-csi-driver must be a map of the Azure provider chart's driver values, such as secrets-store-csi-driver.enableSecretRotation" -}}
{{- end -}}
{{- $winUp := dig "windows" "enabled" false (default dict $up) -}}
{{- $win := false -}}
{{- if kindIs "map" (index $v "windows") -}}{{- $win = index $v "windows" "enabled" -}}{{- end -}}
{{- if or (eq (toString $winUp) "true") (eq (toString $win) "true") -}}
{{- fail "windows.enabled: Coffer's chart has no Windows node components (the driver, the provider and the node agent run on Linux nodes only; see the README's \"Windows nodes\"). Remove the value; Windows pods cannot mount Coffer volumes." -}}
{{- end -}}
{{- $origin := dict -}}
{{- range $pair := include "coffer.aliasPairs" . | fromYamlArray -}}
{{- $from := index $pair 0 -}}
{{- $to := index $pair 1 -}}
{{- /* the alias's value */ -}}
{{- $a := $up -}}
{{- $found := kindIs "map" $up -}}
{{- range $k := splitList "." $from -}}
{{- if and $found (kindIs "map" $a) -}}{{- $a = index $a $k -}}{{- else -}}{{- $found = false -}}{{- end -}}
{{- end -}}
{{- if and (eq (index $pair 2) "bool") (kindIs "string" $a) -}}
{{- if eq (lower $a) "true" -}}{{- $a = true -}}
{{- else if eq (lower $a) "false" -}}{{- $a = false -}}
{{- else -}}{{- fail (printf "secrets-store-csi-driver.%s is %q: use true or false" $from $a) -}}
{{- end -}}
{{- end -}}
{{- if and $found (include "coffer.isSet" $a) -}}
{{- /* Coffer's value, creating its parents */ -}}
{{- $m := $v -}}
{{- $keys := splitList "." $to -}}
{{- range $k := initial $keys -}}
{{- if not (kindIs "map" (index $m $k)) -}}{{- $_ := set $m $k dict -}}{{- end -}}
{{- $m = index $m $k -}}
{{- end -}}
{{- $own := index $m (last $keys) -}}
{{- if and (include "coffer.isSet" $own) (ne (toJson $own) (toJson $a)) -}}
{{- fail (printf "secrets-store-csi-driver.%s (%s, the Azure provider chart's name) and %s (%s) disagree: set only one of them" $from (toJson $a) (get $origin $to | default $to) (toJson $own)) -}}
{{- end -}}
{{- $_ := set $m (last $keys) $a -}}
{{- $_ := set $origin $to (printf "secrets-store-csi-driver.%s" $from) -}}
{{- end -}}
{{- end -}}
{{- /* the defaults of the values values.yaml leaves null */ -}}
{{- range $to, $def := include "coffer.defaults" . | fromYaml -}}
{{- $m := $v -}}
{{- $keys := splitList "." $to -}}
{{- range $k := initial $keys -}}
{{- if not (kindIs "map" (index $m $k)) -}}{{- $_ := set $m $k dict -}}{{- end -}}
{{- $m = index $m $k -}}
{{- end -}}
{{- if kindIs "invalid" (index $m (last $keys)) -}}
{{- $_ := set $m (last $keys) $def -}}
{{- end -}}
{{- end -}}
{{- end -}}
