{{/*
Names, labels and the few derived values every template shares.
*/}}

{{/* The chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "asyncgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every resource: <release>-<chart>, or <release> when the release name
already contains the chart name. Truncated to 63 characters (DNS label).
*/}}
{{- define "asyncgate.fullname" -}}
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

{{/* Name and version as used by the helm.sh/chart label. */}}
{{- define "asyncgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "asyncgate.labels" -}}
helm.sh/chart: {{ include "asyncgate.chart" . }}
{{ include "asyncgate.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: asyncgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select this release's pods; never change them after install (selectors are immutable). */}}
{{- define "asyncgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asyncgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of the gateway's resources, and the selector of its pods. */}}
{{- define "asyncgate.gateway.labels" -}}
{{ include "asyncgate.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}
{{- define "asyncgate.gateway.selectorLabels" -}}
{{ include "asyncgate.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* Labels of the bundled Redis, and the selector of its pod. */}}
{{- define "asyncgate.redis.labels" -}}
{{ include "asyncgate.labels" . }}
app.kubernetes.io/component: redis
{{- end }}
{{- define "asyncgate.redis.selectorLabels" -}}
{{ include "asyncgate.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/* commonAnnotations as a metadata.annotations block body, or nothing. */}}
{{- define "asyncgate.annotations" -}}
{{- with .Values.commonAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "asyncgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "asyncgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the digest wins over the tag. Pass (list image defaultTag). */}}
{{- define "asyncgate.imageRef" -}}
{{- $image := index . 0 }}
{{- $defaultTag := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString ($image.tag | default $defaultTag)) }}
{{- end }}
{{- end }}

{{- define "asyncgate.image" -}}
{{ include "asyncgate.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* True (non-empty) when the chart renders the pod: standalone, or sidecar with modelServer. */}}
{{- define "asyncgate.ownsWorkload" -}}
{{- if or (eq .Values.mode "standalone") .Values.sidecar.modelServer.enabled }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the chart renders the model server next to asyncgate. */}}
{{- define "asyncgate.rendersModelServer" -}}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.modelServer.enabled }}true{{ end }}
{{- end }}

{{/* The URL asyncgate forwards to. */}}
{{- define "asyncgate.upstreamURL" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "http://127.0.0.1:%d" (int .Values.sidecar.modelServer.port) }}
{{- else }}
{{- .Values.upstream.url | trimSuffix "/" }}
{{- end }}
{{- end }}

{{/* Path prefix of asyncgate's own endpoints (probes, metrics). */}}
{{- define "asyncgate.prefix" -}}
{{- dig "server" "prefix" "/_asyncgate" .Values.config | trimSuffix "/" }}
{{- end }}

{{/*
The deployment this release's gateways belong to: the Redis key prefix (asyncgate:<deployment>)
and the identity its runs are kept under. From the release, so two releases sharing one Redis
never share runs; stable across upgrades, so a changed upstream keeps its runs.
*/}}
{{- define "asyncgate.deployment" -}}
{{- .Values.deployment | default (printf "%s.%s" .Release.Namespace (include "asyncgate.fullname" .)) }}
{{- end }}

{{/* The Secret holding the key that seals credentials and webhook URLs in Redis, and its key. */}}
{{- define "asyncgate.encryption.secret" -}}
{{- .Values.encryption.existingSecret | default (printf "%s-encryption" (include "asyncgate.fullname" .)) }}
{{- end }}
{{- define "asyncgate.encryption.key" -}}
{{- if .Values.encryption.existingSecret }}
{{- .Values.encryption.existingSecretKey }}
{{- else -}}
encryption-key
{{- end }}
{{- end }}

{{/* True (non-empty) when the gateway gets its encryption key from a Secret: Redis, unless plain text was chosen. */}}
{{- define "asyncgate.encryption.enabled" -}}
{{- $store := get (.Values.config | default dict) "store" | default dict }}
{{- if and (include "asyncgate.redis.enabled" .) (not (get $store "plaintext")) (not (get $store "encryption_key")) }}true{{ end }}
{{- end }}

{{/* True (non-empty) when asyncgate's state lives in Redis rather than the embedded store. */}}
{{- define "asyncgate.redis.enabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret .Values.redis.bundled.enabled }}true{{ end }}
{{- end }}

{{- define "asyncgate.redis.fullname" -}}
{{- printf "%s-redis" (include "asyncgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the bundled Redis password, and its key. */}}
{{- define "asyncgate.redis.passwordSecret" -}}
{{- .Values.redis.bundled.auth.existingSecret | default (include "asyncgate.redis.fullname" .) }}
{{- end }}
{{- define "asyncgate.redis.passwordKey" -}}
{{- if .Values.redis.bundled.auth.existingSecret }}
{{- .Values.redis.bundled.auth.existingSecretPasswordKey }}
{{- else -}}
redis-password
{{- end }}
{{- end }}

{{/* The Secret holding an external Redis URL, and its key. */}}
{{- define "asyncgate.redis.urlSecret" -}}
{{- .Values.redis.existingSecret | default (printf "%s-store" (include "asyncgate.fullname" .)) }}
{{- end }}
{{- define "asyncgate.redis.urlKey" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else -}}
redis-url
{{- end }}
{{- end }}

{{/* Seconds the pod takes to stop at most: preStop sleep plus drain. */}}
{{- define "asyncgate.stopSeconds" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (int .Values.shutdown.drainTimeoutSeconds) }}
{{- end }}

{{/* terminationGracePeriodSeconds: given, or preStop + drain + 15; it must exceed preStop + drain. */}}
{{- define "asyncgate.terminationGracePeriodSeconds" -}}
{{- $stop := int (include "asyncgate.stopSeconds" .) }}
{{- $grace := int (.Values.terminationGracePeriodSeconds | default (add $stop 15)) }}
{{- if le $grace $stop }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than shutdown.preStopSleepSeconds + shutdown.drainTimeoutSeconds (%d), or in-flight runs are killed before they are handed back" $grace $stop) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/*
Every cross-key rule the schema cannot express, checked once with a message naming the keys.
Included by each template that depends on them, so `helm template -s` fails the same way.
*/}}
{{- define "asyncgate.validate" -}}
{{- $redisSources := 0 }}
{{- if .Values.redis.url }}{{ $redisSources = add1 $redisSources }}{{ end }}
{{- if .Values.redis.existingSecret }}{{ $redisSources = add1 $redisSources }}{{ end }}
{{- if .Values.redis.bundled.enabled }}{{ $redisSources = add1 $redisSources }}{{ end }}
{{- if gt $redisSources 1 }}
{{- fail "set only one of redis.url, redis.existingSecret and redis.bundled.enabled" }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- if not .Values.upstream.url }}
{{- fail "upstream.url is required in standalone mode (the URL of the server asyncgate fronts, e.g. http://model-server:8000)" }}
{{- end }}
{{- if not (regexMatch "^https?://[^/?#]+(/[^?#]*)?$" .Values.upstream.url) }}
{{- fail (printf "upstream.url must be an http:// or https:// URL without query or fragment, got %q" .Values.upstream.url) }}
{{- end }}
{{- if .Values.sidecar.modelServer.enabled }}
{{- fail "sidecar.modelServer.enabled needs mode: sidecar" }}
{{- end }}
{{- else }}
{{- if .Values.upstream.url }}
{{- fail "upstream.url must be empty in sidecar mode: asyncgate calls the model server at http://127.0.0.1:<sidecar.modelServer.port>" }}
{{- end }}
{{- if and .Values.sidecar.modelServer.enabled (not .Values.sidecar.modelServer.image.repository) }}
{{- fail "sidecar.modelServer.image.repository is required when sidecar.modelServer.enabled is true" }}
{{- end }}
{{- if and (not .Values.sidecar.modelServer.enabled) (not .Values.sidecar.podSelector) }}
{{- fail "sidecar mode needs either sidecar.modelServer.enabled (the chart renders the pod) or sidecar.podSelector (the labels of the pods you run with asyncgate added; see examples/sidecar-pod.yaml)" }}
{{- end }}
{{- if eq (int .Values.sidecar.modelServer.port) (int .Values.containerPort) }}
{{- fail (printf "sidecar.modelServer.port and containerPort are both %d; the two containers share the pod's network" (int .Values.containerPort)) }}
{{- end }}
{{- end }}
{{- if not (include "asyncgate.redis.enabled" .) }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d but no Redis is configured: the embedded store allows one replica. Set redis.url, redis.existingSecret or redis.bundled.enabled, or replicaCount: 1" (int .Values.replicaCount)) }}
{{- end }}
{{- if gt (int .Values.workers) 1 }}
{{- fail (printf "workers is %d but no Redis is configured: the embedded store serves one process. Set redis.url, redis.existingSecret or redis.bundled.enabled, or workers: 1" (int .Values.workers)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs Redis: the embedded store allows one replica. Set redis.url, redis.existingSecret or redis.bundled.enabled" }}
{{- end }}
{{- $runs := get (.Values.config | default dict) "runs" | default dict }}
{{- if and (hasKey $runs "execute") (not $runs.execute) }}
{{- fail "config.runs.execute is false but no Redis is configured: with the embedded store no replica would execute the runs. Set redis.url, redis.existingSecret or redis.bundled.enabled" }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- if .Values.redis.bundled.enabled }}
{{- if and .Values.redis.bundled.auth.enabled .Values.redis.bundled.auth.password }}
{{- if not (regexMatch "^[A-Za-z0-9._~-]+$" .Values.redis.bundled.auth.password) }}
{{- fail "redis.bundled.auth.password may hold only URL-safe characters (A-Z a-z 0-9 . _ ~ -): it is placed in the redis:// URL" }}
{{- end }}
{{- end }}
{{- end }}
{{- $grace := int (include "asyncgate.terminationGracePeriodSeconds" .) }}
{{- if include "asyncgate.rendersModelServer" . }}
{{- $msStop := int (.Values.sidecar.modelServer.preStopSleepSeconds | default (include "asyncgate.stopSeconds" .)) }}
{{- if ge $msStop $grace }}
{{- fail (printf "sidecar.modelServer.preStopSleepSeconds (%d) must be shorter than terminationGracePeriodSeconds (%d)" $msStop $grace) }}
{{- end }}
{{- end }}
{{- end }}

{{/* asyncgate's config.yaml: the user's `config` plus the keys the chart owns. */}}
{{- define "asyncgate.configFile" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $server := get $config "server" | default dict }}
{{- $_ := set $server "host" "0.0.0.0" }}
{{- $_ := set $server "port" (int .Values.containerPort) }}
{{- $_ := set $server "workers" (int .Values.workers) }}
{{- $_ := set $config "server" $server }}
{{- $store := get $config "store" | default dict }}
{{- $_ := set $store "data_dir" "/var/lib/asyncgate" }}
{{- $_ := set $config "store" $store }}
{{- $_ := set $config "shutdown" (dict "drain_timeout" (int .Values.shutdown.drainTimeoutSeconds)) }}
{{- $_ := set $config "upstream" (include "asyncgate.upstreamURL" .) }}
{{- $_ := set $config "deployment" (include "asyncgate.deployment" .) }}
{{- toYaml $config }}
{{- end }}

{{/* Environment of the asyncgate container: the Redis URL from its Secret, then extraEnv. */}}
{{- define "asyncgate.env" -}}
{{- if .Values.redis.bundled.enabled }}
{{- $host := printf "%s.%s.svc" (include "asyncgate.redis.fullname" .) .Release.Namespace }}
{{- if .Values.redis.bundled.auth.enabled }}
# Not ASYNCGATE_-prefixed: asyncgate reads only its own variables; this one is expanded below.
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "asyncgate.redis.passwordSecret" . }}
      key: {{ include "asyncgate.redis.passwordKey" . }}
- name: ASYNCGATE_STORE_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%d/0" $host (int .Values.redis.bundled.service.port) | quote }}
{{- else }}
- name: ASYNCGATE_STORE_REDIS_URL
  value: {{ printf "redis://%s:%d/0" $host (int .Values.redis.bundled.service.port) | quote }}
{{- end }}
{{- else if include "asyncgate.redis.enabled" . }}
- name: ASYNCGATE_STORE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "asyncgate.redis.urlSecret" . }}
      key: {{ include "asyncgate.redis.urlKey" . }}
{{- end }}
{{- if include "asyncgate.encryption.enabled" . }}
- name: ASYNCGATE_STORE_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "asyncgate.encryption.secret" . }}
      key: {{ include "asyncgate.encryption.key" . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The asyncgate container, shared by the standalone and the sidecar pod. */}}
{{- define "asyncgate.container" -}}
{{- $prefix := include "asyncgate.prefix" . -}}
- name: asyncgate
  image: {{ include "asyncgate.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  # The image's ENTRYPOINT is `asyncgate`; everything else comes from the mounted file and env.
  args:
    - serve
    - --config
    - /etc/asyncgate/config.yaml
  {{- $env := include "asyncgate.env" . | trim }}
  {{- if $env }}
  env:
    {{- $env | nindent 4 }}
  {{- end }}
  {{- with .Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.containerPort }}
      protocol: TCP
  {{- if .Values.startupProbe.enabled }}
  startupProbe:
    httpGet:
      path: {{ printf "%s/healthz" $prefix }}
      port: http
    {{- toYaml (omit .Values.startupProbe "enabled") | nindent 4 }}
  {{- end }}
  {{- if .Values.livenessProbe.enabled }}
  livenessProbe:
    httpGet:
      path: {{ printf "%s/healthz" $prefix }}
      port: http
    {{- toYaml (omit .Values.livenessProbe "enabled") | nindent 4 }}
  {{- end }}
  {{- if .Values.readinessProbe.enabled }}
  readinessProbe:
    httpGet:
      path: {{ printf "%s/readyz" $prefix }}
      port: http
    {{- toYaml (omit .Values.readinessProbe "enabled") | nindent 4 }}
  {{- end }}
  {{- if gt (int .Values.shutdown.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int .Values.shutdown.preStopSleepSeconds }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: config
      mountPath: /etc/asyncgate
      readOnly: true
    - name: data
      mountPath: /var/lib/asyncgate
    - name: tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The model server container of a chart-rendered sidecar pod. */}}
{{- define "asyncgate.modelServerContainer" -}}
{{- $ms := .Values.sidecar.modelServer -}}
- name: {{ $ms.name }}
  image: {{ include "asyncgate.imageRef" (list $ms.image "latest") | quote }}
  imagePullPolicy: {{ $ms.image.pullPolicy }}
  {{- with $ms.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    # Not named "http": that name is asyncgate's, which the Service targets.
    - name: model
      containerPort: {{ $ms.port }}
      protocol: TCP
  {{- with $ms.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # The kubelet stops all containers of a pod at once; the model server keeps serving for the
  # drain so that asyncgate's in-flight runs can finish against it.
  lifecycle:
    preStop:
      sleep:
        seconds: {{ $ms.preStopSleepSeconds | default (include "asyncgate.stopSeconds" .) | int }}
  {{- with $ms.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $ms.volumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* A shell line that succeeds when redis-cli ping answers one of the case patterns. Pass (list port patterns). */}}
{{- define "asyncgate.redis.pingScript" -}}
{{- printf "reply=$(redis-cli -p %d ping 2>&1); case \"$reply\" in %s) exit 0;; esac; echo \"$reply\"; exit 1" (int (index . 0)) (index . 1) }}
{{- end }}
