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

{{- define "fedprompt.coordinatorSecret" -}}
{{- .Values.tls.coordinatorSecret | default (printf "%s-coordinator-tls" (include "fedprompt.fullname" .)) -}}
{{- end -}}

{{- define "fedprompt.clustererSecret" -}}
{{- .Values.tls.clustererSecret | default (printf "%s-clusterer-tls" (include "fedprompt.fullname" .)) -}}
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

{{/* readiness/liveness: native gRPC probes, or an exec health check that presents the
     pod's own certificate when the server requires mTLS */}}
{{- define "fedprompt.grpcProbe" -}}
{{- $root := index . 0 -}}
{{- $port := index . 1 -}}
{{- $service := index . 2 -}}
{{- if $root.Values.tls.enabled }}
exec:
  command:
    - fedprompt-healthcheck
    - --target=127.0.0.1:{{ $port }}
    - --service={{ $service }}
    - --tls-ca=/etc/fedprompt/tls/ca.crt
    - --tls-cert=/etc/fedprompt/tls/tls.crt
    - --tls-key=/etc/fedprompt/tls/tls.key
{{- else }}
grpc:
  port: {{ $port }}
  service: {{ $service }}
{{- end }}
{{- end -}}
