# Three BEAM nodes on dynamic ports chosen by Nomad. Each allocation
# registers in Consul with a tag of its own (node-<alloc index>), which is
# what DynamicSrv.Epmd asks for a peer's port: node-2.my-app.service.consul.
job "my-app" {
  datacenters = ["dc1"]

  group "app" {
    count = 3

    network {
      port "dist" {}            # dynamic: Nomad picks it, the node listens on it
    }

    service {
      name = "my-app"
      port = "dist"
      tags = ["node-${NOMAD_ALLOC_INDEX}"]

      check {
        type     = "tcp"
        port     = "dist"
        interval = "5s"
        timeout  = "1s"
      }
    }

    task "release" {
      driver = "exec"

      config {
        command = "local/my_app/bin/my_app"
        args    = ["start"]
      }

      env {
        ERL_DIST_PORT           = "${NOMAD_PORT_dist}"
        RELEASE_DISTRIBUTION    = "name"
        RELEASE_NODE            = "node-${NOMAD_ALLOC_INDEX}@my-app.service.consul"
        DYNAMIC_SRV_NAMESERVERS = "${attr.unique.network.ip-address}:8600"
        DYNAMIC_SRV_TIMEOUT_MS  = "1000"
      }

      artifact {
        source = "https://releases.example.com/my_app.tar.gz"
      }
    }
  }
}
