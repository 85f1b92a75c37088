# Noman itself as a Nomad service job: two instances behind Consul service
# discovery, replaced one at a time on every new image (rolling update with
# health checks and automatic revert).
#
# Before the first run:
#   1. Put the Consul ACL token Noman uses (key_prefix "configs/" write, or
#      whatever your keys need, plus key_prefix "noman/" write for its
#      records and leader lock, and session_prefix "" write for the leader
#      election) and, for rolling services, a Nomad token
#      that may read and submit their jobs, into the Nomad variable of
#      this job (readable by this job's tasks without any extra policy):
#        nomad var put nomad/jobs/noman consul_token=<uuid> nomad_token=<uuid>
#   2. Edit the [services.*] tables in the noman.toml template below: each
#      secret_sha256 is `printf %s "$SECRET" | sha256sum` of that service's
#      hook secret (the hashes are not secrets; the secrets stay with the
#      senders).
#   3. nomad job run -var image=owner/noman:release-YYYYMMDDHHMMSS noman.nomad.hcl
#
# Re-submitting this file later: pass the image that is running now (or the
# one you want); the default below is only a placeholder, and a `nomad job
# run` with an older image is a rollback.
#
# Noman can deploy itself: the service "noman" below uses the rolling
# strategy with update = "image", so a release of Noman registers a new
# version of this job with only the noman task's image changed, and Nomad
# replaces the two allocations one by one (see the update block). The two
# instances elect one reconciler with a Consul session lock; when Nomad
# stops the leader, the other instance (or the new one) takes over from the
# records in Consul and reports the outcome: nothing is lost.

variable "image" {
  type        = string
  description = "Noman's image and release tag, e.g. owner/noman:release-20240101120000."
  default     = "owner/noman:release-20240101120000"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "noman" {
  type        = "service"
  datacenters = var.datacenters

  # One allocation at a time; a new one must pass its Consul checks (/healthz
  # and /readyz) for min_healthy_time before the next is replaced; a deployment that does
  # not get healthy is rolled back to the last good version.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "2m"
    progress_deadline = "5m"
    auto_revert       = true
  }

  group "noman" {
    count = 2

    # Prefer different nodes for the two instances (a soft preference, so a
    # one-node cluster still runs both).
    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "http" {
        to = 8000
      }
    }

    service {
      name     = "noman"
      port     = "http"
      provider = "consul"
      # Reverse proxy routing (see README.md next to this file), e.g. Traefik:
      # tags = [
      #   "traefik.enable=true",
      #   "traefik.http.routers.noman.rule=Host(`deploy.example.com`)",
      #   "traefik.http.routers.noman.entrypoints=websecure",
      #   "traefik.http.routers.noman.tls=true",
      # ]
      # or Fabio: tags = ["urlprefix-deploy.example.com/hooks"]

      # The job's own checks, over HTTP on the service's port: Nomad's
      # deployments and Consul's routing never depend on the image's
      # HEALTHCHECK, which an image built in OCI format (podman's and
      # buildah's default without --format docker) does not even carry.
      #
      # Liveness: /healthz answers as long as the process does. Only this
      # check restarts an instance (after a grace period for start-up).
      check {
        name     = "noman-alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "20s"
        }
      }

      # Readiness: /readyz also needs Consul (a leader, the token). It only
      # routes: a failing instance leaves Consul's catalog of healthy
      # instances (and so the proxy's backends) and is never restarted for it,
      # or a Consul outage would restart every Noman at once.
      check {
        name     = "noman-ready"
        type     = "http"
        path     = "/readyz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "noman" {
      driver = "docker"

      # gunicorn's graceful_timeout is 20 s: give in-flight requests that
      # long after SIGTERM before Nomad sends SIGKILL (must not exceed the
      # client's max_kill_timeout, 30 s by default). On the way out each
      # worker gives up the leader lock, so the other instance leads at once.
      kill_signal  = "SIGTERM"
      kill_timeout = "25s"

      config {
        image = var.image
        ports = ["http"]

        # The hardening the image is tested under (scripts/container-smoke).
        readonly_rootfs = true
        cap_drop        = ["all"]
        security_opt    = ["no-new-privileges"]

        # The only writable place the process needs: gunicorn's worker
        # heartbeat files and TMPDIR. Docker provides a /dev/shm tmpfs by
        # default; this makes it explicit and sizes it.
        mount {
          type     = "tmpfs"
          target   = "/dev/shm"
          readonly = false
          tmpfs_options {
            size = 67108864 # 64 MiB, in bytes
          }
        }
      }

      env {
        NOMAN_CONFIG = "/local/noman.toml"
        NOMAN_BIND   = "0.0.0.0:8000"
        # The Consul agent of the node this allocation runs on (its HTTP API
        # must listen on the node's address, not only on 127.0.0.1).
        CONSUL_HTTP_ADDR = "http://${attr.unique.network.ip-address}:8500"
        # Only needed for services with strategy = "rolling".
        NOMAD_ADDR = "http://${attr.unique.network.ip-address}:4646"
      }

      # Tokens from the Nomad variable nomad/jobs/noman (step 1 above), read
      # back as environment variables. The task waits until the variable
      # exists; a changed token restarts the task with the new one.
      # consul_token is required; nomad_token only for rolling services
      # (an item is a struct in templates, hence `with .nomad_token.Value`).
      template {
        destination = "${NOMAD_SECRETS_DIR}/tokens.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/noman" -}}
          CONSUL_HTTP_TOKEN={{ .consul_token }}
          {{ with .nomad_token.Value }}NOMAD_TOKEN={{ . }}{{ end }}
          {{- end }}
        EOT
      }

      # Alternative: the tokens from Vault instead of a Nomad variable. With
      # Nomad 1.7+ workload identity, add `vault { role = "noman" }` to this
      # task (older Nomad: `vault { policies = ["noman"] }`) and replace the
      # template above with, for example, a dynamic token from Vault's Consul
      # secrets engine:
      #
      # template {
      #   destination = "${NOMAD_SECRETS_DIR}/tokens.env"
      #   env         = true
      #   change_mode = "restart"
      #   data        = <<-EOT
      #     {{ with secret "consul/creds/noman" }}CONSUL_HTTP_TOKEN={{ .Data.token }}{{ end }}
      #     {{ with secret "kv/data/noman" }}NOMAD_TOKEN={{ .Data.data.nomad_token }}{{ end }}
      #   EOT
      # }

      # Noman's configuration file. It holds only hashes of the hook secrets,
      # so it can live in the job spec: changing it is a new job version and
      # goes through the rolling update above like a new image.
      template {
        destination = "local/noman.toml"
        change_mode = "restart"
        data        = <<-EOT
          [server]
          log_level = "info"

          [consul]
          # Address and token come from CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN.
          timeout = 5
          # Noman's records and leader lock: outside every service key's folder.
          state_prefix = "noman/"
          session_ttl  = 15

          [nomad]
          # Address and token come from NOMAD_ADDR / NOMAD_TOKEN.
          timeout = 5

          # The secret_sha256 values below are placeholders (no secret hashes
          # to them): replace them with your services' hashes.

          # A website deployed by writing its Consul key (the plain design;
          # see example-restart.nomad.hcl).
          [services."stut.dev"]
          repository    = "stut/stut.dev"
          key           = "configs/stut.dev/IMAGE_TAG"
          secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"

          # Noman itself: the curl/CI call from this repository's image
          # workflow, rolled out through the Nomad job API.
          [services.noman]
          repository    = "owner/noman"
          key           = "configs/noman/IMAGE_TAG"
          secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000002"
          strategy      = "rolling"

          [services.noman.nomad]
          job    = "noman"
          update = "image"
          tasks  = ["noman"]
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
