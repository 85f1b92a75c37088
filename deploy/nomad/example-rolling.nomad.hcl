# Example: the same website as example-restart.nomad.hcl, set up for Noman's
# rolling strategy (strategy = "rolling", update = "meta"): deploys without
# downtime, through Nomad's own deployments.
#
# On a push, Noman writes the tag into the Consul key (as before) and then
# registers a new version of this job in which only Meta.NOMAN_IMAGE_TAG
# changed. A meta change is a destructive update, so Nomad runs a real
# deployment under the update block below: one allocation at a time, each
# new one must pass its health check, and a failed deployment reverts to the
# previous job version (auto_revert).
#
# What differs from the plain design:
#   * the image tag comes from the job spec: job meta is given to every task
#     as the runtime variable NOMAD_META_<key>, which Nomad interpolates into
#     the docker driver's image. A revert to an older job version therefore
#     brings back the older image too. (Reading the image from the template's
#     IMAGE_TAG instead would also roll out, since new allocations render the
#     new Consul value, but an auto_revert would then restart the old job
#     version with the new, failing tag.)
#   * the template keeps reading the Consul key, with change_mode = "noop":
#     the key change no longer restarts running allocations (template
#     environment variables are read once, when a task starts). The app can
#     still report IMAGE_TAG; `noman check` warns while this is "restart".
#   * an update block with health checks and auto_revert.
#
# The matching noman.toml entry:
#   [services."stut.dev"]
#   repository    = "stut/stut.dev"
#   key           = "configs/stut.dev/IMAGE_TAG"
#   secret_sha256 = "<sha256 of the hook secret>"
#   strategy      = "rolling"
#   [services."stut.dev".nomad]
#   job    = "stut-dev"
#   update = "meta"            # sets Meta.NOMAN_IMAGE_TAG (meta_key)
#
# Alternative, update = "image" with tasks = ["web"]: write the image with a
# literal tag, image = "stut/stut.dev:release-20230103082900", and Noman
# rewrites only the tag of that task's Config.image.
#
# Re-submitting this file by hand: the meta value in the file wins, so pass
# the tag that is deployed now, or `nomad job run` rolls the site back:
#   nomad job run \
#     -var "image_tag=$(consul kv get configs/stut.dev/IMAGE_TAG)" \
#     example-rolling.nomad.hcl

variable "image_tag" {
  type        = string
  description = "The release tag to run, e.g. release-20230103082900 (Noman updates it on deploys)."
  default     = "release-20230103082900"
}

job "stut-dev" {
  type        = "service"
  datacenters = ["dc1"]

  # Noman changes this value through the Nomad API (update = "meta").
  meta {
    NOMAN_IMAGE_TAG = var.image_tag
  }

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
    # Optional: start one canary first and promote it once healthy.
    # canary       = 1
    # auto_promote = true
  }

  group "web" {
    count = 2

    network {
      port "http" {
        to = 80
      }
    }

    service {
      name     = "stut-dev"
      port     = "http"
      provider = "consul"

      # The deployment's health signal (health_check = "checks").
      check {
        type     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "web" {
      driver = "docker"

      template {
        destination = "local/image.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
          IMAGE_TAG={{ key "configs/stut.dev/IMAGE_TAG" }}
        EOT
      }

      config {
        image = "stut/stut.dev:${NOMAD_META_NOMAN_IMAGE_TAG}"
        ports = ["http"]
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
