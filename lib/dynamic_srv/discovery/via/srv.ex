defmodule DynamicSrv.Via.Srv do
  @moduledoc """
  A provider that reads the cluster from DNS SRV records, with the rules of
  `Cluster.Strategy.DynamicSrv` (the same parsing, bounds and port book):
  the production choice for Consul, Nomad and Kubernetes headless services.

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        interval: 5,
        service: "my-app.service.consul"

  #{DynamicSrv.Config.table(DynamicSrv.SrvPoll.schema())}

  NXDOMAIN and an empty answer mean "no members"; a failed lookup keeps the
  last membership.
  """
  @behaviour DynamicSrv.Provider

  @impl true
  def schema, do: DynamicSrv.SrvPoll.schema()

  @impl true
  def poll(config), do: DynamicSrv.SrvPoll.poll(settings(config))

  @impl true
  def confirm(node, config), do: DynamicSrv.SrvPoll.confirm(settings(config), node)

  defp settings(config),
    do: DynamicSrv.SrvPoll.new(config, DynamicSrv.Defaults.book_ttl(config.interval_ms))
end
