# The release phase of the "shop" example in README.md (Stages): a
# parameterized batch job that Noman dispatches before any job of the
# service is registered, with Meta NOMAN_IMAGE_TAG = <the pushed tag>.
#
#   [services.shop.release_phase]
#   job     = "shop-migrate"
#   timeout = "15m"
#
# Each push dispatches one child job, shop-migrate/dispatch-<time>-<id>,
# with an idempotency token made of the service, the attempt and the tag:
# a retry or a new Noman leader gets the same child back instead of running
# the migration twice (while Nomad keeps the child, until its job GC).
# Noman follows the child until it is dead: every allocation complete, the
# rollout goes on; a failure or the timeout ends the rollout as failed
# (release_phase_failed, with the exit code and the task's last event) and
# no job is registered. Noman never stops a running release job (a migration
# cut in the middle is worse than one that finishes late), so write
# migrations that the running version survives.
#
# No restarts and no rescheduling: a migration that failed once is a
# failed release, not something to run again behind the operator's back.
#
# Submit it once (and again when this file changes):
#   nomad job run shop-migrate.nomad.hcl
# Try it by hand:
#   nomad job dispatch -meta NOMAN_IMAGE_TAG=release-20240101120000 shop-migrate

job "shop-migrate" {
  type        = "batch"
  datacenters = ["dc1"]

  parameterized {
    payload       = "forbidden"
    meta_required = ["NOMAN_IMAGE_TAG"]
  }

  group "migrate" {
    count = 1

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "migrate" {
      driver = "docker"

      config {
        # The image of the release being deployed: the dispatch's meta.
        image   = "stut/shop:${NOMAD_META_NOMAN_IMAGE_TAG}"
        command = "/app/manage"
        args    = ["migrate", "--no-input"]
      }

      # The database's address and credentials, as the web job gets them.
      template {
        destination = "secrets/db.env"
        env         = true
        data        = <<-EOT
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
