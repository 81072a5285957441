# config/runtime.exs of the application deployed by cluster.yaml.
import Config

namespace = System.get_env("POD_NAMESPACE", "default")

config :libcluster,
  topologies: [
    k8s: [
      strategy: Cluster.Strategy.DynamicSrv,
      config: [
        # Targets my-app-N.my-app.<ns>.svc.cluster.local become
        # nodes :"my-app-N@my-app.<ns>.svc.cluster.local".
        service: "my-app.#{namespace}.svc.cluster.local",
        query: "_dist._tcp.my-app.#{namespace}.svc.cluster.local",
        polling_interval: 5_000
      ]
    ]
  ]
