# The web job of the "shop" example in README.md (Stages): the first of the
# service's two jobs, with one canary that Noman analyses and an operator
# promotes.
#
#   [services.shop.nomad]
#   jobs = ["shop-web", "shop-worker"]     # rolled in this order
#   [services.shop.canary]
#   bake    = "5m"
#   promote = "manual"
#
# A push makes Noman register a new version in which only
# Meta.NOMAN_IMAGE_TAG changed (update = "meta", as example-rolling.nomad.hcl
# explains). Because this version replaces a running one and the update block
# asks for a canary with auto_promote = false, Nomad places one canary
# allocation and waits: "Deployment is running but requires manual
# promotion". Noman carries it: once the canary is healthy it runs the
# service's checks every interval for the bake (a Prometheus query over the
# canary's own metrics, below), then waits for `noman promote shop` (or the
# API or the status page), and promotes through the API; Nomad replaces the
# other allocations. A failed check makes Noman fail the deployment, and
# auto_revert brings the previous version back.
#
# progress_deadline does not fail a deployment whose healthy canaries only
# wait for their promotion, so an operator may take their time.

variable "image_tag" {
  type        = string
  description = "The release tag to run (Noman updates the meta through the API)."
  default     = "release-20240101120000"
}

job "shop-web" {
  type        = "service"
  datacenters = ["dc1"]

  meta {
    NOMAN_IMAGE_TAG = var.image_tag
  }

  update {
    max_parallel      = 1
    canary            = 1
    auto_promote      = false
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
  }

  group "web" {
    count = 3

    network {
      port "http" {
        to = 8000
      }
    }

    service {
      name     = "shop-web"
      port     = "http"
      provider = "consul"

      # Prometheus (consul_sd_configs) turns this into the series' version
      # label, so a query can tell the canary's requests from the others'.
      meta {
        version = "${NOMAD_META_NOMAN_IMAGE_TAG}"
      }
      # Only the canary carries this tag while it waits for its promotion.
      canary_tags = ["canary"]

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "web" {
      driver = "docker"

      config {
        image = "stut/shop:${NOMAD_META_NOMAN_IMAGE_TAG}"
        ports = ["http"]
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
