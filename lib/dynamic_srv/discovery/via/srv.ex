defmodule DynamicSrv.Via.Srv do
  @moduledoc """
  A provider that reads the cluster from DNS SRV records, with the rules of
  `Cluster.Strategy.DynamicSrv` (the same parsing, bounds and port book):
  the production choice for Consul, Nomad and Kubernetes headless services.

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        interval: 5,
        service: "my-app.service.consul"

  #{DynamicSrv.Config.table(DynamicSrv.Srv.schema())}

  NXDOMAIN and an empty answer mean "no members"; a failed lookup keeps the
  last membership.
  """
  @behaviour DynamicSrv.Provider

  @impl true
  def schema, do: DynamicSrv.Srv.schema()

  @impl true
  def poll(config), do: DynamicSrv.Srv.poll(settings(config))

  @impl true
  def confirm(node, config), do: DynamicSrv.Srv.confirm(settings(config), node)

  defp settings(config),
    do: DynamicSrv.Srv.new(config, DynamicSrv.Defaults.book_ttl(config.interval_ms))
end
