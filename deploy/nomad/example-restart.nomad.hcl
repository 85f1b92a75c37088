# Example: a website deployed the plain way (Noman's default strategy,
# strategy = "restart").
#
# Noman writes the new tag into the Consul key configs/stut.dev/IMAGE_TAG.
# The template below watches that key; when it changes, Nomad re-renders the
# file and, with change_mode = "restart", restarts the task with the new
# IMAGE_TAG, so the docker driver pulls stut/stut.dev:<new tag>.
#
# Simple, and needs no Nomad token for Noman, but:
#   * every allocation restarts at about the same moment: a few seconds of
#     downtime per deploy (splay only spreads the restarts a little);
#   * a template change is not a new job version, so the update block,
#     health-checked rollouts, canaries, auto_revert and `nomad job revert`
#     are all bypassed.
# example-rolling.nomad.hcl shows the same site set up for Noman's rolling
# strategy, which avoids both.
#
# The matching noman.toml entry:
#   [services."stut.dev"]
#   repository    = "stut/stut.dev"
#   key           = "configs/stut.dev/IMAGE_TAG"
#   secret_sha256 = "<sha256 of the hook secret>"
#
# Noman writes nothing else in the key's folder (its own records live under
# consul.state_prefix, "noman/" by default), so a template that renders the
# whole folder, {{ range ls "configs/stut.dev" }}{{ .Key }}={{ .Value }}
# {{ end }}, restarts the task only when the tag changes.
#
# The key must exist before the first run (the template waits for it):
#   consul kv put configs/stut.dev/IMAGE_TAG release-20230103082900

job "stut-dev" {
  type        = "service"
  datacenters = ["dc1"]

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

      check {
        type     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "web" {
      driver = "docker"

      # IMAGE_TAG from Consul, as an environment variable of the task. Only
      # change_mode = "restart" makes a changed template reach the task's
      # environment (and so the image below).
      template {
        destination = "local/image.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          IMAGE_TAG={{ key "configs/stut.dev/IMAGE_TAG" }}
        EOT
      }

      config {
        # Template environment variables are interpolated into the driver
        # config when the task starts.
        image = "stut/stut.dev:${IMAGE_TAG}"
        ports = ["http"]
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
