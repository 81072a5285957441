defmodule DynamicSrv.Application do
  @moduledoc false
  # Starts DynamicSrv.Runner when `config :libcluster_dynamic_srv, via: ...`
  # is set; otherwise the application starts nothing (the strategy is
  # started by libcluster, the epmd module by the kernel).
  use Application
  require Logger

  @impl true
  def start(_type, _args) do
    hint_libcluster()

    children =
      if Application.get_env(:libcluster_dynamic_srv, :via),
        do: [{DynamicSrv.Runner, Application.get_all_env(:libcluster_dynamic_srv)}],
        else: []

    Supervisor.start_link(children, strategy: :one_for_one, name: DynamicSrv.Supervisor)
  end

  # The published package brought libcluster in; this one does not. An app
  # switched over with its `config :libcluster` topologies but without the
  # dependency would otherwise die later, when its supervisor starts
  # Cluster.Supervisor, with no word about why.
  defp hint_libcluster do
    if uses_strategy?(Application.get_env(:libcluster, :topologies)) and
         not Code.ensure_loaded?(Cluster.Supervisor) do
      Logger.warning(
        "config :libcluster topologies use Cluster.Strategy.DynamicSrv, but libcluster is not loaded: " <>
          "add {:libcluster, \"~> 3.3\"} to your dependencies (libcluster_dynamic_srv does not bring it in), " <>
          "or run the strategy without libcluster (config :libcluster_dynamic_srv, via: DynamicSrv.Via.Srv)"
      )
    end
  end

  defp uses_strategy?(topologies) when is_list(topologies) do
    Enum.any?(topologies, fn
      {_name, config} when is_list(config) ->
        Keyword.get(config, :strategy) == Cluster.Strategy.DynamicSrv

      _other ->
        false
    end)
  end

  defp uses_strategy?(_topologies), do: false
end
