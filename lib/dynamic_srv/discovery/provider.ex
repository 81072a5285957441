defmodule DynamicSrv.Provider do
  @moduledoc """
  The contract of a discovery provider run by `DynamicSrv.Runner`.

  A provider is a module with `poll/0`, returning the node names that should
  form the cluster: a list of atoms, or `{:ok, nodes}`, or `{:error, reason}`
  when its source failed (the runner then keeps the last membership).

  It reads its settings with `config/0` or `get/2`: the runner resolves the
  application environment (see `DynamicSrv.DeferredConfig`), validates it
  and writes the result back before the first poll.

  Optional callbacks: `schema/0`, a `DynamicSrv.Config` schema of the
  provider's own keys, checked at start; and, for a provider that is a
  process (`serves: true`), `child_spec/1` or `start_link/1`, given the
  resolved configuration, or `start_link/0` (Peerage's providers have only
  that one). A provider process that cannot start is retried with a
  backoff and never stops the application (see `DynamicSrv.Runner`).

      defmodule MyApp.Inventory do
        @behaviour DynamicSrv.Provider
        def poll, do: MyApp.Api.node_names()
      end

      config :libcluster_dynamic_srv, via: MyApp.Inventory, interval: 30
  """

  @app :libcluster_dynamic_srv

  @callback poll() :: [node()] | {:ok, [node()]} | {:error, term()}
  @callback schema() :: DynamicSrv.Config.schema()
  @optional_callbacks schema: 0

  @doc "The runner's resolved configuration (the application environment)."
  @spec config() :: keyword()
  def config, do: Application.get_all_env(@app)

  @doc "One key of the resolved configuration."
  @spec get(atom(), term()) :: term()
  def get(key, default \\ nil), do: Application.get_env(@app, key, default)

  @doc """
  Calls `provider.poll/0` and normalises its result to `{:ok, nodes}` or
  `{:error, reason}`; a result that is not a list of atoms is an error.
  """
  @spec poll(module()) :: {:ok, [node()]} | {:error, term()}
  def poll(provider) do
    case provider.poll() do
      {:ok, nodes} when is_list(nodes) -> check(nodes)
      {:error, _} = error -> error
      nodes when is_list(nodes) -> check(nodes)
      other -> {:error, {:unexpected_response, other}}
    end
  end

  defp check(nodes) do
    if Enum.all?(nodes, &is_atom/1),
      do: {:ok, nodes},
      else: {:error, {:unexpected_response, nodes}}
  end
end
