{{/* Names and labels shared by every template of the chart. */}}

{{- define "fedprompt.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedprompt.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector labels of one component: include "fedprompt.selector" (list . "coordinator") */}}
{{- define "fedprompt.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "fedprompt.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s%s:%s" $root.Values.image.registry (index . 1) $root.Values.image.tag -}}
{{- end -}}

{{- define "fedprompt.tlsSecret" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "fedprompt.fullname" .)) -}}
{{- end -}}

{{/* command-line flags for transport security */}}
{{- define "fedprompt.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-cert=/etc/fedprompt/tls/tls.crt
- --tls-key=/etc/fedprompt/tls/tls.key
- --tls-ca=/etc/fedprompt/tls/ca.crt
{{- else }}
- --insecure
{{- end }}
{{- end -}}

{{/* the client image; the CUDA flavour is tagged <tag>-cuda */}}
{{- define "fedprompt.siloImage" -}}
{{- $tag := .Values.image.tag -}}
{{- if .Values.gpu.enabled }}{{ $tag = printf "%s-cuda" $tag }}{{ end -}}
{{- printf "%s%s:%s" .Values.image.registry .Values.image.repository $tag -}}
{{- end -}}

{{/* the label that says which silo a resource serves; a simulation's pods host many */}}
{{- define "fedprompt.siloLabel" -}}
{{- if .Values.simulation.enabled -}}
fedprompt.io/simulation: "true"
{{- else -}}
fedprompt.io/silo: {{ .Values.silo.id | quote }}
{{- end -}}
{{- end -}}

{{/* fail unless a value is a whole number >= a minimum:
     include "fedprompt.wholeNumber" (list "simulation.replicas" .Values.simulation.replicas 1) */}}
{{- define "fedprompt.wholeNumber" -}}
{{- $name := index . 0 -}}
{{- $v := index . 1 -}}
{{- $min := index . 2 -}}
{{- $number := or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if not (and $number (eq (float64 $v) (float64 (int64 $v))) (ge (int64 $v) (int64 $min))) -}}
{{- fail (printf "%s must be a whole number >= %d, got %v" $name $min $v) -}}
{{- end -}}
{{- end -}}
