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
  | `serves` | the provider is a process to start and keep running (see below) | `false` |
  | `disconnect_removed` | disconnect nodes the provider stops listing | `true` |
  | `fence` | when the provider stops listing this node after it had listed it, disconnect and dial nobody until listed again (see `DynamicSrv.Membership`) | `true` with `DynamicSrv.Via.Srv` and `disconnect_removed`, else `false` |
  | `connect` / `disconnect` / `list_nodes` | MFAs used to connect, disconnect and list nodes (the node is appended to the arguments), as in libcluster | `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes([:connected])` |

  plus the provider's own keys. Every value may be deferred to start time
  (`{:system, "VAR"}` and the other forms of `DynamicSrv.DeferredConfig`).
  A bad value is logged as one error naming the key and the value, and the
  runner does not start; the application and the VM keep running.

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
    fence: {:boolean, nil},
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
       fence: fence?(config),
       log_results: config.log_results,
       connect: config.connect,
       disconnect: config.disconnect,
       list_nodes: config.list_nodes,
       name: DynamicSrv.Runner.Membership}

    provider =
      if config.serves,
        do: [{DynamicSrv.Runner.Keeper, via: via, config: Map.to_list(config)}],
        else: []

    Supervisor.init(provider ++ [engine], strategy: :one_for_one)
  end

  # Unset, only providers whose answer lists the local node as its peers
  # see it (SRV) fence, and not when removed nodes are kept connected.
  defp fence?(%{fence: nil, via: via, disconnect_removed: disconnect}),
    do: disconnect and via == DynamicSrv.Via.Srv

  defp fence?(%{fence: fence}), do: fence

  defp provider_schema(via) do
    if function_exported?(via, :schema, 0), do: via.schema(), else: []
  end
end

defmodule DynamicSrv.Runner.Keeper do
  @moduledoc """
  Starts the provider process of a runner with `serves: true` and keeps it
  running, instead of a supervisor that would give up, and take the
  application down, after a few failed starts.

  A start that fails is logged once with what to fix (again only when the
  reason changes) and retried after `next_delay/1`: 1 s, doubling up to
  30 s. A provider that exits is restarted after the current delay, which
  goes back to 1 s once a provider has run for 30 s.
  """
  use GenServer
  require Logger

  @first_delay 1_000
  @max_delay 30_000
  @shutdown 5_000

  @doc false
  def child_spec(opts) do
    %{id: __MODULE__, start: {__MODULE__, :start_link, [opts]}, shutdown: @shutdown + 1_000}
  end

  @doc "Starts the keeper of `opts[:via]`, given the runner's configuration as `opts[:config]`."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc "The delay before the start that follows a failed one waited `delay` ms."
  @spec next_delay(pos_integer()) :: pos_integer()
  def next_delay(delay), do: min(delay * 2, @max_delay)

  @doc """
  How the runner starts `via`: its `child_spec/1`, else `start_link/1` with
  `config`, else `start_link/0`. A start naming `start_link/1` of a module
  that only has `start_link/0` (as `use GenServer` generates for Peerage's
  providers) becomes `start_link/0`. `{:error, :no_start}` when the module
  has none of them.
  """
  @spec start_mfa(module(), keyword()) :: {:ok, mfa()} | {:error, term()}
  def start_mfa(via, config) do
    Code.ensure_loaded(via)

    cond do
      function_exported?(via, :child_spec, 1) ->
        %{start: {m, f, a}} = Supervisor.child_spec({via, config}, [])
        {:ok, arity_fallback({m, f, a})}

      function_exported?(via, :start_link, 1) ->
        {:ok, {via, :start_link, [config]}}

      function_exported?(via, :start_link, 0) ->
        {:ok, {via, :start_link, []}}

      true ->
        {:error, :no_start}
    end
  rescue
    e -> {:error, {:child_spec, Exception.format_banner(:error, e, __STACKTRACE__)}}
  end

  defp arity_fallback({m, :start_link, [_]} = mfa) do
    if not function_exported?(m, :start_link, 1) and function_exported?(m, :start_link, 0),
      do: {m, :start_link, []},
      else: mfa
  end

  defp arity_fallback(mfa), do: mfa

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    via = Keyword.fetch!(opts, :via)
    Logger.metadata(topology: via)

    state = %{
      via: via,
      config: Keyword.fetch!(opts, :config),
      pid: nil,
      started_at: nil,
      delay: @first_delay,
      failures: 0,
      logged: nil
    }

    # The first attempt runs before the runner starts the engine, so its
    # first poll finds the provider up; later ones run from the timer.
    {:ok, start(state)}
  end

  @impl true
  def handle_info(:start, %{pid: nil} = state), do: {:noreply, start(state)}
  def handle_info(:start, state), do: {:noreply, state}

  def handle_info({:EXIT, pid, reason}, %{pid: pid} = state) do
    ran = System.monotonic_time(:millisecond) - state.started_at
    delay = if ran >= @max_delay, do: @first_delay, else: state.delay

    Logger.warning(
      "#{inspect(state.via)} exited (#{inspect(reason, limit: 10)}); restarting it in #{seconds(delay)}"
    )

    Process.send_after(self(), :start, delay)
    {:noreply, %{state | pid: nil, delay: next_delay(delay), logged: nil}}
  end

  # The exit of a provider that failed to start, or of anything else linked.
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, %{pid: pid}) when is_pid(pid) do
    Process.exit(pid, :shutdown)

    receive do
      {:EXIT, ^pid, _} -> :ok
    after
      @shutdown ->
        Process.exit(pid, :kill)
        receive do: ({:EXIT, ^pid, _} -> :ok)
    end
  end

  def terminate(_reason, _state), do: :ok

  defp start(state) do
    case run_start(state.via, state.config) do
      {:ok, pid} ->
        # Also a provider started without a link is watched.
        Process.link(pid)

        if state.failures > 0,
          do:
            Logger.info("#{inspect(state.via)} started after #{state.failures} failed attempt(s)")

        %{
          state
          | pid: pid,
            started_at: System.monotonic_time(:millisecond),
            failures: 0,
            logged: nil
        }

      :ignore ->
        state

      {:error, reason} ->
        message = failure_message(state.via, reason)

        # The same failure again is not logged again; the success says how
        # many attempts failed.
        if message != state.logged,
          do:
            Logger.error(
              "#{message}; retrying in #{seconds(state.delay)}, the delay doubling up to #{seconds(@max_delay)}"
            )

        Process.send_after(self(), :start, state.delay)

        %{
          state
          | delay: next_delay(state.delay),
            failures: state.failures + 1,
            logged: message
        }
    end
  end

  defp run_start(via, config) do
    with {:ok, {m, f, a}} <- start_mfa(via, config) do
      case apply(m, f, a) do
        {:ok, pid} when is_pid(pid) -> {:ok, pid}
        {:ok, pid, _info} when is_pid(pid) -> {:ok, pid}
        :ignore -> :ignore
        {:error, reason} -> {:error, reason}
        other -> {:error, {:bad_return, other}}
      end
    end
  catch
    kind, reason -> {:error, {:raised, Exception.format_banner(kind, reason, __STACKTRACE__)}}
  end

  defp failure_message(via, :no_start),
    do:
      "#{inspect(via)} cannot start: with serves: true a provider needs child_spec/1, start_link/1 or start_link/0; define one, or set serves: false if it is not a process"

  defp failure_message(via, {:child_spec, banner}),
    do: "#{inspect(via)}.child_spec/1 raised #{banner}; fix the provider"

  defp failure_message(via, {:raised, banner}),
    do: "#{inspect(via)} raised while starting: #{banner}; fix the provider or its configuration"

  defp failure_message(via, {:bad_return, other}),
    do:
      "#{inspect(via)} did not start: its start returned #{inspect(other, limit: 10)}, expected {:ok, pid}, :ignore or {:error, reason}; fix the provider"

  # A provider's own message (DynamicSrv.Via.Udp gives its fix in it).
  defp failure_message(via, {:shutdown, reason}) when is_binary(reason),
    do: failure_message(via, reason)

  defp failure_message(via, reason) when is_binary(reason),
    do: "#{inspect(via)} did not start: #{reason}"

  defp failure_message(via, {reason, stack}) when is_list(stack) and is_exception(reason),
    do:
      "#{inspect(via)} did not start: its init raised #{Exception.format_banner(:error, reason, stack)}; fix the provider or its configuration"

  defp failure_message(via, reason),
    do:
      "#{inspect(via)} did not start: #{inspect(reason, limit: 10)}; fix the provider or its configuration"

  defp seconds(ms) when rem(ms, 1_000) == 0, do: "#{div(ms, 1_000)} s"
  defp seconds(ms), do: "#{ms} ms"
end
