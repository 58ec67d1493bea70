{{/*
Names are fixed, as in k8s/base: one release per namespace. Generated ConfigMaps and
Secrets carry a 10-character content hash, as Kustomize's generators do, so a change of
configuration rolls the pods that read it.
*/}}

{{/* Labels of every object's metadata. */}}
{{- define "catga.labels" -}}
app.kubernetes.io/part-of: catga
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The app image (web, consumers, migrations). */}}
{{- define "catga.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}

{{- define "catga.hash" -}}
{{ . | sha256sum | trunc 10 }}
{{- end }}

{{- define "catga.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://nats:4222
{{- else -}}
{{ required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end -}}
{{- end }}

{{/* Replicas of the app's streams: never more than the NATS StatefulSet has. */}}
{{- define "catga.streamReplicas" -}}
{{- if .Values.nats.enabled -}}
{{ min 3 (int .Values.nats.replicas) }}
{{- else -}}
{{ .Values.nats.streamReplicas }}
{{- end -}}
{{- end }}

{{/* "true" when the transport is Redis Streams (else empty). */}}
{{- define "catga.redis" -}}
{{- if eq .Values.transport "redis" }}true{{ end -}}
{{- end }}

{{/* "true" when the release runs NATS: the transport is NATS and nats.enabled. */}}
{{- define "catga.natsInRelease" -}}
{{- if and (not (include "catga.redis" .)) .Values.nats.enabled }}true{{ end -}}
{{- end }}

{{/* "true" when the release runs Redis: the transport is Redis and redis.enabled. */}}
{{- define "catga.redisInRelease" -}}
{{- if and (include "catga.redis" .) .Values.redis.enabled }}true{{ end -}}
{{- end }}

{{- define "catga.redisUrl" -}}
{{- if .Values.redis.enabled -}}
redis://redis:6379/0
{{- else -}}
{{ required "redis.url is required with transport redis when redis.enabled is false" .Values.redis.url }}
{{- end -}}
{{- end }}

{{/* catga-env's data, as YAML. With Redis, none of the NATS settings: the Redis transport
refuses CATGA_STREAM_REPLICAS at start-up, and NATS_URL would name a server that is not there. */}}
{{- define "catga.envData" -}}
{{- $env := deepCopy .Values.config.env -}}
{{- $_ := set $env "CATGA_TRANSPORT" .Values.transport -}}
{{- if include "catga.redis" . -}}
{{- $_ := set $env "REDIS_URL" (include "catga.redisUrl" .) -}}
{{- else -}}
{{- $_ := set $env "NATS_URL" (include "catga.natsUrl" .) -}}
{{- $_ := set $env "CATGA_STREAM_REPLICAS" (include "catga.streamReplicas" .) -}}
{{- end -}}
{{- $_ := set $env "CATGA_PUBLIC_HOSTS" (join "," .Values.config.publicHosts) -}}
{{- toYaml $env -}}
{{- end }}

{{/* catga-files' data, as YAML. */}}
{{- define "catga.filesData" -}}
{{- if .Values.config.catgaJson -}}
catga.json: {{ printf "%s\n" (toPrettyJson .Values.config.catgaJson) | toJson }}
{{- else -}}
catga.json: {{ .Files.Get "files/catga.json" | toJson }}
{{- end -}}
{{- end }}

{{- define "catga.envName" -}}
catga-env-{{ include "catga.envData" . | include "catga.hash" }}
{{- end }}

{{- define "catga.filesName" -}}
catga-files-{{ include "catga.filesData" . | include "catga.hash" }}
{{- end }}

{{- define "catga.appSecretData" -}}
{{- range $key, $value := .Values.secrets.app }}
{{ $key }}: {{ $value | toString | b64enc }}
{{- end }}
{{- end }}

{{- define "catga.natsUsersData" -}}
{{- range $key, $value := .Values.secrets.natsUsers }}
{{ $key }}: {{ $value | toString | b64enc }}
{{- end }}
{{- end }}

{{- define "catga.appSecretName" -}}
{{- if .Values.secrets.create -}}
catga-secrets-{{ include "catga.appSecretData" . | include "catga.hash" }}
{{- else -}}
{{ .Values.secrets.appSecretName }}
{{- end -}}
{{- end }}

{{- define "catga.natsUsersName" -}}
{{- if .Values.secrets.create -}}
catga-nats-users-{{ include "catga.natsUsersData" . | include "catga.hash" }}
{{- else -}}
{{ .Values.secrets.natsUsersSecretName }}
{{- end -}}
{{- end }}

{{/* The hardened container securityContext (Pod Security "restricted", read-only root). */}}
{{- define "catga.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "catga.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* envFrom of every app container: catga-env and catga-secrets ($ is the root context,
env and secret the names to read: the migration hook reads its own copies). */}}
{{- define "catga.envFrom" -}}
- configMapRef:
    name: {{ .env }}
- secretRef:
    name: {{ .secret }}
{{- end }}

{{/* A wait-for-migrations init container: new pods wait until the migration Job has
applied this image's migrations. */}}
{{- define "catga.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ include "catga.image" . }}
  command: ["sh", "-c"]
  args:
    - until python manage.py migrate --check >/dev/null; do echo "waiting for migrations"; sleep 5; done
  envFrom:
    {{- include "catga.envFrom" (dict "env" (include "catga.envName" .) "secret" (include "catga.appSecretName" .)) | nindent 4 }}
  resources:
    {{- toYaml .Values.waitForMigrations.resources | nindent 4 }}
  securityContext:
    {{- include "catga.containerSecurity" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: catga-files
      mountPath: /etc/catga
      readOnly: true
{{- end }}

{{/* topologySpreadConstraints over hosts and zones for pods labelled name=<.name> (and
context=<.context>: each consumer Deployment spreads its own pods, as in the overlays). */}}
{{- define "catga.spread" -}}
{{- $selector := dict "app.kubernetes.io/name" .name }}
{{- if .context }}{{ $_ := set $selector "catga.io/context" .context }}{{ end }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: {{ .host | default "ScheduleAnyway" }}
  labelSelector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
{{- end }}

{{/* prometheus.io/* annotations of a pod on `port`, unless the ServiceMonitor replaces them. */}}
{{- define "catga.scrapeAnnotations" -}}
{{- if not .root.Values.serviceMonitor.enabled }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ .port | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The NATS password key of a role: NATS_PASSWORD_<ROLE>. */}}
{{- define "catga.passwordKey" -}}
NATS_PASSWORD_{{ upper . }}
{{- end }}

{{/* A container's own NATS user, role and password (one key of catga-nats-users). */}}
{{- define "catga.natsUserEnv" -}}
- name: NATS_USER
  value: {{ .role }}
- name: CATGA_ROLE
  value: {{ .role }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ include "catga.passwordKey" .role }}
{{- end }}

{{/* With Redis: the password every app container reads, the key redis-password of the app
Secret (.secret); Redis itself reads the same key. */}}
{{- define "catga.redisPasswordEnv" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: redis-password
{{- end }}

{{/* A container's role (what it may publish): with NATS its own user and password too
(catga.natsUserEnv); with Redis the role alone, the password being REDIS_PASSWORD. */}}
{{- define "catga.roleEnv" -}}
{{- if include "catga.redis" .root -}}
- name: CATGA_ROLE
  value: {{ .role }}
{{- else -}}
{{ include "catga.natsUserEnv" (dict "role" .role "secret" (include "catga.natsUsersName" .root)) }}
{{- end -}}
{{- end }}

{{/* Extra env (name: value map) as a list. */}}
{{- define "catga.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The nats.conf of a cluster of .Values.nats.replicas nodes. */}}
{{- define "catga.natsConf" -}}
# NATS JetStream, {{ .Values.nats.replicas }} node(s), rendered by the chart from values
# (the overlays: k8s/base/nats/nats.conf, k8s/overlays/dev/stack/nats.conf). Variables come
# from the pod's environment: SERVER_NAME (= the pod name) and NATS_PASSWORD_<ROLE> (the
# Secret catga-nats-users, read by permissions.conf). KEDA's JetStream scaler finds a
# stream's leader by server name, so server names are the pod names.
server_name: $SERVER_NAME
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
pid_file: /var/run/nats/nats.pid

# The preStop hook puts the server in lame-duck mode; terminationGracePeriodSeconds (60)
# covers 10 + 30 s plus the shutdown itself.
lame_duck_grace_period: 10s
lame_duck_duration: 30s

# max_payload and one user per role: generated by `manage.py nats_permissions`
# (files/permissions.conf), never edited by hand; the other key of this ConfigMap.
include ./permissions.conf

jetstream {
  store_dir: /data/jetstream
  max_memory_store: {{ .Values.nats.jetstream.memoryStore }}
  max_file_store: {{ .Values.nats.jetstream.fileStore }}
}
{{- if gt (int .Values.nats.replicas) 1 }}

cluster {
  name: catga
  listen: 0.0.0.0:6222
  # One route per StatefulSet replica.
  routes: [
  {{- range $i := until (int .Values.nats.replicas) }}
    nats://nats-{{ $i }}.nats-headless:6222
  {{- end }}
  ]
}
{{- end }}
{{ end }}

{{- define "catga.natsConfigData" -}}
nats.conf: {{ include "catga.natsConf" . | toJson }}
permissions.conf: {{ .Files.Get "files/permissions.conf" | toJson }}
{{- end }}

{{- define "catga.natsConfigName" -}}
nats-config-{{ include "catga.natsConfigData" . | include "catga.hash" }}
{{- end }}

{{/* NetworkPolicy egress of the app's pods: NATS or Redis, then PostgreSQL and OTLP. */}}
{{- define "catga.transportEgress" -}}
{{- if include "catga.redis" . }}
{{- include "catga.redisEgress" . }}
{{- else }}
{{- include "catga.natsEgress" . }}
{{- end }}
{{- end }}
{{- define "catga.redisEgress" -}}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: redis
  ports:
{{- else }}
# An external Redis: any address.
- ports:
{{- end }}
    - protocol: TCP
      port: 6379
{{- end }}
{{- define "catga.natsEgress" -}}
{{- if .Values.nats.enabled }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: nats
  ports:
{{- else }}
# An external NATS: any address.
- ports:
{{- end }}
    - protocol: TCP
      port: 4222
{{- end }}
{{- define "catga.appEgress" -}}
- ports:
    - protocol: TCP
      port: 5432
- ports:
    - protocol: TCP
      port: 4317
    - protocol: TCP
      port: 4318
{{- end }}

{{/* redis.conf: files/redis.conf (k8s/components/redis/redis.conf) with redis.maxmemory. */}}
{{- define "catga.redisConfigData" -}}
{{- $conf := regexReplaceAll "(?m)^maxmemory .*$" (.Files.Get "files/redis.conf") (printf "maxmemory %s" .Values.redis.maxmemory) -}}
redis.conf: {{ $conf | toJson }}
{{- end }}

{{- define "catga.redisConfigName" -}}
redis-config-{{ include "catga.redisConfigData" . | include "catga.hash" }}
{{- end }}
