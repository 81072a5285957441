defmodule ReleaseApp.Application do
  @moduledoc false
  # Starts Cluster.Strategy.DynamicSrv when config/runtime.exs gave a
  # service (CLUSTER_SERVICE). libcluster is not a dependency here (the
  # example builds offline); with libcluster, the same strategy goes into
  # `config :libcluster, topologies: [...]` instead.
  use Application

  @impl true
  def start(_type, _args) do
    children =
      case Application.get_env(:release_app, :cluster_service) do
        nil ->
          []

        service ->
          state = %{topology: :release_app, config: [service: service]}
          [{Cluster.Strategy.DynamicSrv, [state]}]
      end

    Supervisor.start_link(children, strategy: :one_for_one, name: ReleaseApp.Supervisor)
  end
end
