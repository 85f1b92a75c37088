# The worker job of the "shop" example in README.md (Stages): the same image
# as shop-web, run as queue workers. It is the service's second job:
#
#   [services.shop.nomad]
#   jobs = ["shop-web", "shop-worker"]
#
# Noman registers its new version only once shop-web's deployment (canary,
# analysis, promotion, the remaining allocations) succeeded. When this
# job's deployment fails, auto_revert brings its previous version back and
# Noman reverts shop-web to the version it ran before (POST
# /v1/job/shop-web/revert with EnforcePriorVersion), so at rest the site
# never runs two releases; the key goes back to the old tag too.
#
# No canary here: workers have no traffic to compare, so Nomad rolls them
# one by one on their health checks alone.

variable "image_tag" {
  type        = string
  description = "The release tag to run (Noman updates the meta through the API)."
  default     = "release-20240101120000"
}

job "shop-worker" {
  type        = "service"
  datacenters = ["dc1"]

  meta {
    NOMAN_IMAGE_TAG = var.image_tag
  }

  update {
    max_parallel     = 1
    auto_revert      = true
    health_check     = "checks"
    min_healthy_time = "10s"
    healthy_deadline = "3m"
  }

  group "worker" {
    count = 2

    network {
      port "health" {
        to = 8001
      }
    }

    service {
      name     = "shop-worker"
      port     = "health"
      provider = "consul"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "worker" {
      driver = "docker"

      config {
        image   = "stut/shop:${NOMAD_META_NOMAN_IMAGE_TAG}"
        command = "/app/manage"
        args    = ["worker"]
        ports   = ["health"]
      }

      template {
        destination = "local/image.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
          IMAGE_TAG={{ key "configs/shop/IMAGE_TAG" }}
          DATABASE_URL={{ key "configs/shop/DATABASE_URL" }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
