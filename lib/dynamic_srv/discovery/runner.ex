defmodule DynamicSrv.Runner do
  alias DynamicSrv.Defaults

  @schema [
    via:
      {:module, :required,
       "the provider module (`DynamicSrv.Via.*` or your own, see `DynamicSrv.Provider`)"},
    interval: {:pos_integer, 10, "seconds between polls"},
    log_results: {:boolean, true, "log each connect and disconnect"},
    serves: {:boolean, false, "the provider is a process to start and keep running (see below)"},
    disconnect_removed: {:boolean, true, "disconnect nodes the provider stops listing"},
    fence:
      {:boolean, nil,
       "when the provider stops listing this node after it had listed it, disconnect and dial nobody until listed again (see `DynamicSrv.Membership`)",
       "`disconnect_removed` for a provider with `confirm/2` (`DynamicSrv.Via.Srv`), else `false`"},
    connect:
      {:mfa, Defaults.connect(),
       "the MFA a connection is made with, the node appended to its arguments, as in libcluster"},
    disconnect: {:mfa, Defaults.disconnect(), "the MFA a node is disconnected with"},
    list_nodes: {:mfa, Defaults.list_nodes(), "the MFA that lists the connected nodes"}
  ]

  @moduledoc """
  Standalone discovery, without libcluster: runs a provider (`via`) on the
  membership engine, from the application's own configuration.

  `DynamicSrv.Application` starts it only when `:via` is configured:

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        interval: 10,
        log_results: true,
        service: "my-app.service.consul"

  #{DynamicSrv.Config.table(@schema)}

  plus the provider's own keys. Peerage's `sync_offset` is accepted and
  has no effect (polls here are spread by a jitter of up to 10% of the
  interval); it is named in one warning at start. Every value may be deferred to start time
  (`{:system, "VAR"}` and the other forms of `DynamicSrv.DeferredConfig`).
  A bad value is logged as one error naming the key and the value, and the
  runner does not start; the application and the VM keep running.

  The validated configuration is the one source of settings: each poll
  passes it to the provider's `poll/1`. `configure/1` changes the
  provider's own keys while the runner runs (e.g. the `node_list` of
  `DynamicSrv.Via.List`), validated the same way: a bad value is returned
  as `{:error, message}` and the running configuration stays as it was.

  ## A provider that is a process (`serves: true`)

  The runner starts it with its `child_spec/1`, else `start_link/1` (given
  the resolved configuration), else `start_link/0` (Peerage's convention;
  also when a generated `child_spec/1` names a `start_link/1` the module
  does not have). A provider that cannot start (its UDP port is taken, it
  has none of these functions, its start raises or returns an error) never
  stops the runner or the application: the failure is logged once, with
  what to fix, and the start is retried after 1 s, then after a delay that
  doubles up to 30 s; the success after failures is logged too. A provider
  that exits later is restarted the same way. Meanwhile its polls fail,
  which keeps the last membership.

  ## One process that nothing knocks over

  The runner is a `GenServer` that traps exits and keeps its children (the
  provider process and the membership engine, registered as
  `DynamicSrv.Runner.Membership`) itself rather than through an OTP
  supervisor: a `Supervisor` or `DynamicSupervisor` exits on a call it does
  not know (`GenServer.call(pid, :hello)` ends it with `function_clause`, on
  OTP 25 as on OTP 29) and gives up after a few restarts. Unknown calls get
  `{:error, :unknown_call}`; casts, stray messages and exits of linked
  processes other than its parent and children are ignored. When its parent
  stops it, it stops the engine, then the provider.
  """
  use GenServer
  require Logger

  alias DynamicSrv.Runner.Child

  @app :libcluster_dynamic_srv
  @config_key {__MODULE__, :config}

  # Peerage's keys accepted for compatibility, with no effect here.
  @ignored [:sync_offset]

  @doc "Starts the runner with `config` (by default the application environment)."
  @spec start_link(keyword()) :: GenServer.on_start() | :ignore
  def start_link(config \\ Application.get_all_env(@app)) do
    case prepare(config) do
      {:ok, config} ->
        GenServer.start_link(__MODULE__, config, name: __MODULE__)

      {:error, message} ->
        Logger.error(message)
        :ignore
    end
  end

  @doc """
  Changes provider keys of the running configuration from the next poll on:
  `{:ok, config}`, or `{:error, message}` (a bad value, a key of the runner
  itself, which needs a restart, or no runner running) and nothing changes.
  """
  @spec configure(keyword()) :: {:ok, map()} | {:error, String.t()}
  def configure(changes) when is_list(changes) do
    with {:ok, current} <- running_config(),
         :ok <- provider_keys_only(changes),
         {:ok, validated} <- prepare(Map.to_list(current) ++ changes) do
      :persistent_term.put(@config_key, validated)
      {:ok, validated}
    end
  end

  defp running_config do
    case {Process.whereis(__MODULE__), :persistent_term.get(@config_key, nil)} do
      {pid, config} when is_pid(pid) and is_map(config) -> {:ok, config}
      _ -> {:error, "DynamicSrv.Runner is not running: nothing to configure"}
    end
  end

  defp provider_keys_only(changes) do
    case Enum.find(Keyword.keys(changes), &Keyword.has_key?(@schema, &1)) do
      nil -> :ok
      key -> {:error, "#{inspect(key)} is a key of the runner: restart it to change that key"}
    end
  end

  @doc """
  Resolves deferred values and validates the runner's and the provider's
  keys. The result is what the provider's `poll/1` is given; it is also
  written back to the application environment, for providers with only
  `poll/0` (Peerage's convention) that read it there.
  """
  @spec prepare(keyword()) :: {:ok, map()} | {:error, String.t()}
  def prepare(config) do
    context = "libcluster_dynamic_srv configuration"

    with {:ok, resolved} <- DynamicSrv.DeferredConfig.resolve(config),
         {:ok, runner} <- DynamicSrv.Config.validate(resolved, @schema, context),
         {:ok, validated} <-
           DynamicSrv.Config.validate(resolved, @schema ++ provider_schema(runner.via), context) do
      # Peerage's interval is in seconds; the engine and the port book count
      # in ms, converted here once.
      validated = Map.put(validated, :interval_ms, validated.interval * 1_000)
      Enum.each(validated, fn {key, value} -> Application.put_env(@app, key, value) end)
      {:ok, validated}
    end
  end

  @doc false
  def child_spec(config) do
    # Time for the engine, then the provider, to stop.
    shutdown = 2 * Child.shutdown() + 1_000
    %{id: __MODULE__, start: {__MODULE__, :start_link, [config]}, shutdown: shutdown}
  end

  @impl true
  def init(config) do
    Process.flag(:trap_exit, true)

    for key <- @ignored, Map.has_key?(config, key) do
      Logger.warning(
        "#{inspect(key)} is Peerage's and has no effect here (polls are spread by a jitter of up to 10% of the interval); remove it"
      )
    end

    :persistent_term.put(@config_key, config)
    via = config.via
    Logger.metadata(topology: via)

    engine_opts = [
      topology: via,
      poll: fn -> DynamicSrv.Provider.poll(via, :persistent_term.get(@config_key, config)) end,
      confirm: confirm(via),
      interval: config.interval_ms,
      disconnect_removed: config.disconnect_removed,
      fence: config.fence,
      log_results: config.log_results,
      connect: config.connect,
      disconnect: config.disconnect,
      list_nodes: config.list_nodes,
      name: DynamicSrv.Runner.Membership
    ]

    # The provider's first start runs before the engine's, so the first
    # poll finds it up.
    provider =
      if config.serves,
        do: Child.start(Child.new(:provider, {:provider, via, Map.to_list(config)})),
        else: nil

    engine =
      Child.start(Child.new(:engine, {:mfa, DynamicSrv.Membership, :start_link, [engine_opts]}))

    {:ok, %{provider: provider, engine: engine}}
  end

  @impl true
  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}

  @impl true
  def handle_info({Child, :start, id}, state),
    do: {:noreply, update_kept(state, id, &Child.start_again/1)}

  def handle_info({:EXIT, pid, reason}, state) do
    case Enum.find([:provider, :engine], &match?(%Child{pid: ^pid}, Map.get(state, &1))) do
      nil -> {:noreply, state}
      id -> {:noreply, update_kept(state, id, &Child.exited(&1, reason))}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    Child.stop(state.engine)
    if state.provider, do: Child.stop(state.provider)
    :persistent_term.erase(@config_key)
    :ok
  end

  defp update_kept(state, id, fun) do
    case Map.fetch!(state, id) do
      nil -> state
      kept -> Map.put(state, id, fun.(kept))
    end
  end

  # A provider whose answers may leave nodes out asks about one by name.
  defp confirm(via) do
    if function_exported?(via, :confirm, 2),
      do: &via.confirm(&1, :persistent_term.get(@config_key))
  end

  defp provider_schema(via) do
    if function_exported?(via, :schema, 0), do: via.schema(), else: []
  end
end
