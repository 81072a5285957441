defmodule DynamicSrv.Provider do
  @moduledoc """
  The contract of a discovery provider run by `DynamicSrv.Runner`.

  A provider is a module with `poll/1`, given the runner's resolved and
  validated configuration (a map: the runner's keys, with `interval_ms`
  the polling interval in ms, the provider's own keys of `schema/0` with
  their defaults, and any other keys as given), and
  returning the node names that should form the cluster: a list of atoms,
  or `{:ok, nodes}`, or `{:error, reason}` when its source failed (the
  runner then keeps the last membership).

  A provider with only `poll/0` (Peerage's convention) is called so, and
  can read the same configuration with `config/0` or `get/2`: the runner
  also writes it back to the application environment before the first poll.

  Optional callbacks: `schema/0`, a `DynamicSrv.Config` schema of the
  provider's own keys, checked at start; and, for a provider that is a
  process (`serves: true`), `child_spec/1` or `start_link/1`, given the
  resolved configuration, or `start_link/0` (Peerage's providers have only
  that one). A provider process that cannot start is retried with a
  backoff and never stops the application (see `DynamicSrv.Runner`).

  A provider whose answers may leave live nodes out (DNS servers that
  trim or sample their answers) implements `confirm/2`: given a node an
  answer left out and the configuration, it asks its source about that
  node alone and returns `:present`, `:absent` or `{:error, reason}`. The
  engine then drops a node only when it is confirmed absent (see
  `DynamicSrv.Membership`); without `confirm/2`, answers are taken as
  whole, and a node two answers in a row leave out is dropped.

      defmodule MyApp.Inventory do
        @behaviour DynamicSrv.Provider
        @impl true
        def schema, do: [inventory_url: {:string, :required}]
        @impl true
        def poll(config), do: MyApp.Api.node_names(config.inventory_url)
      end

      config :libcluster_dynamic_srv,
        via: MyApp.Inventory,
        interval: 30,
        inventory_url: "https://inventory.internal/nodes"
  """

  @app :libcluster_dynamic_srv

  @type result :: [node()] | {:ok, [node()]} | {:error, term()}

  @callback poll(config :: map()) :: result()
  @callback poll() :: result()
  @callback schema() :: DynamicSrv.Config.schema()
  @callback confirm(node(), config :: map()) :: :present | :absent | {:error, term()}
  @optional_callbacks poll: 0, poll: 1, schema: 0, confirm: 2

  @doc "The runner's resolved configuration, for providers with only `poll/0`."
  @spec config() :: keyword()
  def config, do: Application.get_all_env(@app)

  @doc "One key of the resolved configuration, for providers with only `poll/0`."
  @spec get(atom(), term()) :: term()
  def get(key, default \\ nil), do: Application.get_env(@app, key, default)

  @doc """
  Calls `provider.poll/1` with `config` (or `poll/0` when the provider has
  only that) and normalises its result to `{:ok, nodes}` or
  `{:error, reason}`; a result that is not a list of atoms is an error.
  """
  @spec poll(module(), map()) :: {:ok, [node()]} | {:error, term()}
  def poll(provider, config) do
    result =
      if Code.ensure_loaded?(provider) and function_exported?(provider, :poll, 1),
        do: provider.poll(config),
        else: provider.poll()

    case result do
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
