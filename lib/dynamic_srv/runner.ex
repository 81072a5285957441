defmodule DynamicSrv.Runner do
  @moduledoc """
  Standalone discovery, without libcluster: runs a provider (`via`) on the
  membership engine, from the application's own configuration.

  `DynamicSrv.Application` starts it only when `:via` is configured:

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        interval: 10,
        log_results: true,
        service: "my-app.service.consul"

  | key | meaning | default |
  | --- | --- | --- |
  | `via` | the provider module (`DynamicSrv.Via.*` or your own, see `DynamicSrv.Provider`) | required |
  | `interval` | seconds between polls | `10` |
  | `log_results` | log each connect and disconnect | `true` |
  | `serves` | the provider is a process to start and supervise | `false` |
  | `disconnect_removed` | disconnect nodes the provider stops listing | `true` |
  | `connect` / `disconnect` / `list_nodes` | MFAs used to connect, disconnect and list nodes (the node is appended to the arguments), as in libcluster | `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes([:connected])` |

  plus the provider's own keys. Every value may be deferred to start time
  (`{:system, "VAR"}` and the other forms of `DynamicSrv.DeferredConfig`).
  A bad value is logged as one error naming the key and the value, and the
  runner does not start; the application and the VM keep running.
  """
  use Supervisor
  require Logger

  @app :libcluster_dynamic_srv
  @schema [
    via: {:module, :required},
    interval: {:pos_integer, 10},
    log_results: {:boolean, true},
    serves: {:boolean, false},
    disconnect_removed: {:boolean, true},
    connect: {:mfa, {:net_kernel, :connect_node, []}},
    disconnect: {:mfa, {:erlang, :disconnect_node, []}},
    list_nodes: {:mfa, {:erlang, :nodes, [:connected]}}
  ]

  @doc "Starts the runner with `config` (by default the application environment)."
  @spec start_link(keyword()) :: Supervisor.on_start() | :ignore
  def start_link(config \\ Application.get_all_env(@app)) do
    case prepare(config) do
      {:ok, config} ->
        Supervisor.start_link(__MODULE__, config, name: __MODULE__)

      {:error, message} ->
        Logger.error(message)
        :ignore
    end
  end

  @doc """
  Resolves deferred values, validates the runner's and the provider's keys
  and writes the result back to the application environment.
  """
  @spec prepare(keyword()) :: {:ok, map()} | {:error, String.t()}
  def prepare(config) do
    context = "libcluster_dynamic_srv configuration"

    with {:ok, resolved} <- DynamicSrv.DeferredConfig.resolve(config),
         {:ok, runner} <- DynamicSrv.Config.validate(resolved, @schema, context),
         {:ok, validated} <-
           DynamicSrv.Config.validate(resolved, @schema ++ provider_schema(runner.via), context) do
      Enum.each(validated, fn {key, value} -> Application.put_env(@app, key, value) end)
      {:ok, validated}
    end
  end

  @impl true
  def init(config) do
    via = config.via

    engine =
      {DynamicSrv.Membership,
       topology: via,
       poll: fn -> DynamicSrv.Provider.poll(via) end,
       interval: config.interval * 1_000,
       disconnect_removed: config.disconnect_removed,
       log_results: config.log_results,
       connect: config.connect,
       disconnect: config.disconnect,
       list_nodes: config.list_nodes,
       name: DynamicSrv.Runner.Membership}

    provider = if config.serves, do: [provider_child(via, config)], else: []
    Supervisor.init(provider ++ [engine], strategy: :one_for_one)
  end

  defp provider_schema(via) do
    if function_exported?(via, :schema, 0), do: via.schema(), else: []
  end

  defp provider_child(via, config) do
    if function_exported?(via, :child_spec, 1),
      do: {via, Map.to_list(config)},
      else: %{id: via, start: {via, :start_link, [Map.to_list(config)]}}
  end
end
