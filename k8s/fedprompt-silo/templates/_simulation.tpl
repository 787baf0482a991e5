{{/* The simulation mode (simulation.enabled): its checks, resources and shard check. */}}

{{/* Refuse values that make no sense for a simulated federation, before anything renders. */}}
{{- define "fedprompt.simulationChecks" -}}
{{- $sim := .Values.simulation -}}
{{- include "fedprompt.wholeNumber" (list "simulation.replicas" $sim.replicas 1) -}}
{{- include "fedprompt.wholeNumber" (list "simulation.clientsPerPod" $sim.clientsPerPod 1) -}}
{{- range $part := list "perPod" "perClient" -}}
{{- range $field := list "cpuMillis" "memoryMiB" -}}
{{- $name := printf "simulation.resources.%s.%s" $part $field -}}
{{- include "fedprompt.wholeNumber" (list $name (index (index $sim.resources $part) $field) 0) -}}
{{- end -}}
{{- end -}}
{{- include "fedprompt.wholeNumber" (list "simulation.maxPassExamples" $sim.maxPassExamples 1) -}}
{{- include "fedprompt.wholeNumber" (list "simulation.resources.perPassExampleMiB" $sim.resources.perPassExampleMiB 0) -}}
{{- $factor := $sim.resources.memoryLimitFactor -}}
{{- if not (and (or (kindIs "float64" $factor) (kindIs "int64" $factor) (kindIs "int" $factor)) (ge (float64 $factor) 1.0)) -}}
{{- fail (printf "simulation.resources.memoryLimitFactor must be a number >= 1 (limit = factor x request), got %v" $factor) -}}
{{- end -}}
{{- if not $sim.shards.existingClaim -}}
{{- fail "simulation.shards.existingClaim is required: a ReadOnlyMany or ReadWriteMany claim holding shard-0 ... shard-<replicas-1> (fedprompt shard-silos writes them)" -}}
{{- end -}}
{{- if or .Values.tls.existingSecret .Values.tls.cert .Values.tls.key .Values.tls.ca -}}
{{- fail "simulation.enabled takes each silo's certificate from its shard (shard-<i>/certs); tls.existingSecret, tls.cert, tls.key and tls.ca are one silo's: leave them empty" -}}
{{- end -}}
{{- if or .Values.silo.id .Values.silo.metadata .Values.silo.extraArgs -}}
{{- fail "simulation.enabled takes client ids and metadata from the shard's silo folders; silo.id, silo.metadata and silo.extraArgs are one silo's: leave them empty (simulation.extraArgs passes flags to the host)" -}}
{{- end -}}
{{- if or .Values.data.existingClaim .Values.state.existingClaim -}}
{{- fail "simulation.enabled reads silos from simulation.shards.existingClaim and keeps state per pod (simulation.state); data.existingClaim and state.existingClaim are one silo's: leave them empty" -}}
{{- end -}}
{{- if .Values.serviceMonitor.enabled -}}
{{- fail "serviceMonitor.enabled: a simulation's host process serves no /metrics (fedprompt_client_agent.host has no --metrics-port); follow the coordinator's metrics instead" -}}
{{- end -}}
{{- if not (semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "simulation.enabled needs Kubernetes >= 1.28 (the StatefulSet pod-index label picks each pod's shard); this cluster is %s" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{/* requests = perPod + clientsPerPod x perClient (+ maxPassExamples x perPassExampleMiB of
     memory); memory limit = memoryLimitFactor x the memory request */}}
{{- define "fedprompt.simulationResources" -}}
{{- $sim := .Values.simulation -}}
{{- $r := $sim.resources -}}
{{- $n := int64 $sim.clientsPerPod -}}
{{- $cpu := add (int64 $r.perPod.cpuMillis) (mul $n (int64 $r.perClient.cpuMillis)) -}}
{{- $pass := mul (int64 $sim.maxPassExamples) (int64 $r.perPassExampleMiB) -}}
{{- $memory := add (int64 $r.perPod.memoryMiB) (mul $n (int64 $r.perClient.memoryMiB)) $pass -}}
{{- $limit := mulf $memory $r.memoryLimitFactor | ceil | int64 -}}
{{- $limits := dict "memory" (printf "%dMi" $limit) -}}
{{- if .Values.gpu.enabled }}{{ $_ := set $limits .Values.gpu.resourceName .Values.gpu.count }}{{ end -}}
{{- toYaml (dict "requests" (dict "cpu" (printf "%dm" $cpu) "memory" (printf "%dMi" $memory)) "limits" $limits) -}}
{{- end -}}

{{/* the pod's StatefulSet ordinal, which picks its shard (the label needs Kubernetes >= 1.28) */}}
{{- define "fedprompt.podIndexEnv" -}}
- name: POD_INDEX
  valueFrom:
    fieldRef:
      fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
{{- end -}}
