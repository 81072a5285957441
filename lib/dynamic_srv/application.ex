defmodule DynamicSrv.Application do
  @moduledoc false
  # Starts DynamicSrv.Runner when `config :libcluster_dynamic_srv, via: ...`
  # is set; otherwise the application starts nothing (the strategy is
  # started by libcluster, the epmd module by the kernel).
  use Application

  @impl true
  def start(_type, _args) do
    children =
      if Application.get_env(:libcluster_dynamic_srv, :via),
        do: [{DynamicSrv.Runner, Application.get_all_env(:libcluster_dynamic_srv)}],
        else: []

    Supervisor.start_link(children, strategy: :one_for_one, name: DynamicSrv.Supervisor)
  end
end
