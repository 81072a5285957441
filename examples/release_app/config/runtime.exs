import Config

# The service whose SRV records list this release's nodes, e.g.
# CLUSTER_SERVICE=my-service.service.consul; unset, the node runs alone.
if service = System.get_env("CLUSTER_SERVICE") do
  config :release_app, cluster_service: service
end
