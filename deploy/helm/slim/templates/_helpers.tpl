{{/*
Names and labels.
*/}}
{{- define "slim.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slim.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "slim.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "slim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "slim.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ include "slim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{- define "slim.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "slim.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "slim.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slim.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slim.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The Workload API socket: volume and mount (same for node and controller).
*/}}
{{- define "slim.spiffeVolume" -}}
- name: spiffe-workload-api
{{- if eq .Values.identity.mode "csi" }}
  csi:
    driver: {{ .Values.identity.csiDriver }}
    readOnly: true
{{- else if eq .Values.identity.mode "hostPath" }}
  hostPath:
    path: {{ .Values.identity.hostPath }}
    type: Directory
{{- else }}
{{- fail "identity.mode must be csi or hostPath" }}
{{- end }}
{{- end }}

{{- define "slim.spiffeMount" -}}
- name: spiffe-workload-api
  mountPath: /spiffe-workload-api
  readOnly: true
{{- end }}

{{- define "slim.spiffeEnv" -}}
- name: SPIFFE_ENDPOINT_SOCKET
  value: {{ printf "unix:///spiffe-workload-api/%s" .Values.identity.socketName | quote }}
{{- end }}

{{/*
node.toml: the keys of deploy/fleet/node-*.toml (reference:
deploy/config/node.toml). Per-pod values come from the environment:
SLIM_NODE_ID, SLIM_EXTERNAL_ENDPOINT, SPIFFE_ENDPOINT_SOCKET.
tests/tests/deploy.rs renders this block with values.yaml and parses the
result with the node's config loader: keep to if/else/end and
".Values.x | toJson" here (toJson, not toToml: Helm's toToml writes
integers as floats).
*/}}
{{- define "slim.nodeToml" -}}
[node]
{{- if .Values.node.id }}
id = {{ .Values.node.id | toJson }}
{{- end }}
listen = {{ printf "0.0.0.0:%d" (int .Values.node.port) | toJson }}
handshake_timeout_ms = {{ .Values.node.handshakeTimeoutMs | toJson }}
idle_timeout_ms = {{ .Values.node.idleTimeoutMs | toJson }}
keep_alive_ms = {{ .Values.node.keepAliveMs | toJson }}
max_connections = {{ .Values.node.maxConnections | toJson }}
udp_buffer_bytes = {{ .Values.node.udpBufferBytes | toJson }}
shutdown_drain_ms = {{ .Values.node.shutdownDrainMs | toJson }}

[identity]
# The SPIRE agent's Workload API; socket from $SPIFFE_ENDPOINT_SOCKET.
source = "spire"
initial_timeout_ms = {{ .Values.identity.initialTimeoutMs | toJson }}

[limits]
max_frame_bytes = {{ .Values.node.maxFrameBytes | toJson }}

[queue]
max_frames = {{ .Values.node.queueMaxFrames | toJson }}
max_bytes = {{ .Values.node.queueMaxBytes | toJson }}
slow_consumer = {{ .Values.node.slowConsumer | toJson }}
write_deadline_ms = {{ .Values.node.writeDeadlineMs | toJson }}
overflow_bytes = {{ .Values.node.queueOverflowBytes | toJson }}

[metrics]
listen = {{ printf "0.0.0.0:%d" (int .Values.metrics.nodePort) | toJson }}

[log]
format = {{ .Values.log.format | toJson }}
level = {{ .Values.log.level | toJson }}

[authz]
mode = {{ .Values.authz.mode | toJson }}
{{- if eq .Values.authz.mode "policy" }}
policy_file = "policy.toml"
{{- end }}

[federation]
keep_alive_ms = {{ .Values.node.federation.keepAliveMs | toJson }}
link_timeout_ms = {{ .Values.node.federation.linkTimeoutMs | toJson }}
link_queue_frames = {{ .Values.node.federation.linkQueueFrames | toJson }}
link_queue_bytes = {{ .Values.node.federation.linkQueueBytes | toJson }}
backoff_initial_ms = {{ .Values.node.federation.backoffInitialMs | toJson }}
backoff_max_ms = {{ .Values.node.federation.backoffMaxMs | toJson }}
max_hops = {{ .Values.node.federation.maxHops | toJson }}

[controller]
address = {{ .Values.controller.address | toJson }}
server_name = {{ .Values.controller.serverName | toJson }}
{{- if .Values.controller.expectSpiffeId }}
expect_spiffe_id = {{ .Values.controller.expectSpiffeId | toJson }}
{{- end }}
cluster = {{ .Values.node.cluster | toJson }}
advertise_server_name = {{ .Values.node.advertiseServerName | toJson }}
report_interval_ms = {{ .Values.controller.reportIntervalMs | toJson }}
{{- end }}

{{/*
controller.toml: the keys of deploy/fleet/controller.toml (reference:
deploy/config/controller.toml). Same rendering rules as slim.nodeToml.
*/}}
{{- define "slim.controllerToml" -}}
[controller]
listen = {{ printf "0.0.0.0:%d" (int .Values.controller.port) | toJson }}
data_dir = "/var/lib/slim/controller-data"
plan_grace_secs = {{ .Values.controller.planGraceSecs | toJson }}
startup_hold_ms = {{ .Values.controller.startupHoldMs | toJson }}
max_connections = {{ .Values.controller.maxConnections | toJson }}

[identity]
source = "spire"
initial_timeout_ms = {{ .Values.identity.initialTimeoutMs | toJson }}

[authz]
nodes = {{ .Values.controller.authz.nodes | toJson }}
admins = {{ .Values.controller.authz.admins | toJson }}

[metrics]
listen = {{ printf "0.0.0.0:%d" (int .Values.metrics.controllerPort) | toJson }}

[log]
format = {{ .Values.log.format | toJson }}
level = {{ .Values.log.level | toJson }}
{{- end }}

{{/*
The node's policy when authz.policy is empty (values.yaml explains the
choice): deny by default. The fleet's nodes (the SPIFFE IDs the chart's
ClusterSPIFFEID gives them) may open peer links, so clusters federate; no
agent may register, publish or subscribe until the operator's policy says
so.
*/}}
{{- define "slim.defaultPolicy" -}}
# The slim chart's default policy (authz.policy was not given): deny by
# default. Only the fleet's nodes may open peer links; every agent is
# refused. Give the real policy with
#   --set-file authz.policy=policy.toml   (format: deploy/fleet/policy.toml)
[[rule]]
spiffe_id = "spiffe://{{ .Values.trustDomain }}/*/node/*"
peer = true
{{- end }}
