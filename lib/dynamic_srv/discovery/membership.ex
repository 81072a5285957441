defmodule DynamicSrv.Membership do
  @moduledoc """
  The membership engine: polls a provider for the list of nodes that should
  form the cluster, connects the ones that are not connected and disconnects
  the ones that left. `Cluster.Strategy.DynamicSrv` and the standalone
  runner (`config :libcluster_dynamic_srv, via: ...`) both run on it, so the
  poll, diff and connect logic exists once.

  ## Options

  | option | meaning | default |
  | --- | --- | --- |
  | `:poll` | `(-> {:ok, [node()]} \\| {:error, reason})`, the provider | required |
  | `:topology` | a name for logs and libcluster | `:dynamic_srv` |
  | `:interval` | ms between polls (a jitter of up to 10% is added) | `5000` |
  | `:disconnect_removed` | disconnect nodes that left the answer | `true` |
  | `:members` | nodes already known (a list or a MapSet), counted as members from the start, so that the rules below drop one the answers leave out | `[]` |
  | `:fence` | fence the local node when answers that listed it stop listing it (see the rules) | `false` |
  | `:connect` / `:disconnect` / `:list_nodes` | MFAs, the node appended as last argument | `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes(:connected)` |
  | `:connect_timeout` | how long one round of connects may take, in ms | `min(interval, 10_000)` |
  | `:poll_timeout` | how long the provider may take, in ms | `30_000` |
  | `:log_results` | log each connect and disconnect at info level | `true` |
  | `:name` | the process name | none |

  ## Rules

  * The first poll runs at start, then every `:interval`.
  * Every listed node that is not connected is connected on every poll, in
    parallel and within `:connect_timeout`, so a dead peer cannot stall the
    loop. The local node is never connected.
  * A node is disconnected only when successful answers stop listing it:
    it must be missing from two consecutive answers (a grace against an
    answer that flaps). The answer that first misses a node brings the next
    poll forward to a quarter of `:interval`, so a node that really left is
    dropped within about 1.25 intervals, not 2. With `disconnect_removed: false` it is never
    disconnected, and forgotten once its connection is gone.
  * A node dropped that way while its connection is up is asked to leave
    the cluster itself (`:global.disconnect/0` run on it), and disconnected
    as usual if it has not gone within 1 s. `global`'s
    `prevent_overlapping_partitions` (on by default since OTP 25) would
    drop it from every node anyway; when it alone leaves, in one step, the
    nodes that stay lose no link between them, where one node disconnecting
    it while others still held it made `global` cut some. Only with the
    default disconnect MFA and while that option (and `connect_all`) is on.
  * A failed poll (timeout, SERVFAIL, refused, network, a crashed provider)
    changes nothing: the last membership stands and the nodes the last
    answer listed are still reconnected (a node that answer left out is
    kept, not dialled again). The failure is logged when it starts and
    when it ends.
  * With `fence: true`, the engine watches the local node in the answers
    (before leaving it out of what it dials). Once a successful answer has
    listed it and two successful answers in a row have then left it out, the
    node has been removed while it runs: it disconnects every node it
    manages (its members, and any node an answer lists) and dials none,
    and cuts any such connection made to it, until an answer lists it again.
    The first connections go in one step through `:global.disconnect/0`
    (OTP 25.1+) when the disconnect MFA is the default one and `global`
    knows no node outside the topology, so that `global` on the other nodes
    cuts no link between two of them; otherwise one by one through the
    disconnect MFA. A node not listed yet (booting before its registration
    shows up) dials as usual; failed polls neither start nor end a fence,
    nor cut anything.
    The fence is logged once when it starts (a warning) and once when it
    ends.
  * When libcluster's `Cluster.Strategy` is loaded, connects and disconnects
    go through `Cluster.Strategy.connect_nodes/4` and `disconnect_nodes/4`,
    so libcluster logs and emits telemetry as for its own strategies.

  ## Telemetry

  When the `:telemetry` library is loaded (the package does not depend on
  it), the engine emits:

  | event | measurements | metadata |
  | --- | --- | --- |
  | `[:libcluster_dynamic_srv, :poll]` | `duration` (native units), `nodes` (listed, 0 on error) | `topology`, `result` (`:ok` or `:error`), `reason` (on error) |
  | `[:libcluster_dynamic_srv, :connect]` | `duration` | `topology`, `node`, `result` (what the connect MFA returned) |
  | `[:libcluster_dynamic_srv, :disconnect]` | `count` | `topology`, `nodes` |

  Every log line carries `topology` (and `node` where one is concerned) as
  Logger metadata.
  """
  use GenServer
  require Logger

  alias DynamicSrv.Defaults

  @libcluster Cluster.Strategy
  @removal_grace 2
  @leave_wait 1_000
  @jitter 0.1

  defstruct [
    :poll,
    :topology,
    :interval,
    :disconnect_removed,
    :connect,
    :disconnect,
    :list_nodes,
    :connect_timeout,
    :poll_timeout,
    :log_results,
    # Whether libcluster's Cluster.Strategy and :telemetry are there,
    # looked up once at start rather than on every connect.
    :libcluster,
    :telemetry,
    fence: false,
    members: MapSet.new(),
    missing: %{},
    failing: nil,
    confirm: false,
    polls: 0,
    # The local node's own place in the answers: whether a successful
    # answer has listed it, how many successful answers in a row have left
    # it out since, and, while fenced, the nodes cut off.
    self_listed: false,
    self_missing: 0,
    fenced: nil
  ]

  @type t :: %__MODULE__{}

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    {name, opts} = Keyword.pop(opts, :name)
    GenServer.start_link(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  @doc "The nodes the engine currently counts as members."
  @spec members(GenServer.server()) :: [node()]
  def members(server), do: GenServer.call(server, :members)

  @impl true
  def init(opts) do
    # An exit of a linked caller is a message to ignore; the parent's exit
    # still stops the engine (GenServer handles it).
    Process.flag(:trap_exit, true)
    interval = Keyword.get(opts, :interval, Defaults.polling_interval())

    state = %__MODULE__{
      poll: Keyword.fetch!(opts, :poll),
      topology: Keyword.get(opts, :topology, :dynamic_srv),
      interval: interval,
      disconnect_removed: Keyword.get(opts, :disconnect_removed, true),
      connect: Keyword.get(opts, :connect, Defaults.connect()),
      disconnect: Keyword.get(opts, :disconnect, Defaults.disconnect()),
      list_nodes: Keyword.get(opts, :list_nodes, Defaults.list_nodes()),
      connect_timeout: Keyword.get(opts, :connect_timeout, min(interval, 10_000)),
      poll_timeout: Keyword.get(opts, :poll_timeout, 30_000),
      log_results: Keyword.get(opts, :log_results, true),
      fence: Keyword.get(opts, :fence, false),
      members: opts |> Keyword.get(:members, []) |> known_nodes(),
      libcluster:
        Code.ensure_loaded?(@libcluster) and function_exported?(@libcluster, :connect_nodes, 4),
      telemetry: Code.ensure_loaded?(:telemetry)
    }

    Logger.metadata(topology: state.topology)
    {:ok, state, {:continue, :poll}}
  end

  # Nodes given as already known (a MapSet or a list), less anything that
  # is not a node name and the local node.
  defp known_nodes(%MapSet{} = nodes), do: known_nodes(MapSet.to_list(nodes))

  defp known_nodes(nodes) when is_list(nodes),
    do: for(n <- nodes, is_atom(n) and n not in [nil, node()], into: MapSet.new(), do: n)

  defp known_nodes(_other), do: MapSet.new()

  @impl true
  def handle_continue(:poll, state), do: {:noreply, poll_and_schedule(state)}

  @impl true
  def handle_info(:poll, state), do: {:noreply, poll_and_schedule(state)}

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_call(:members, _from, state), do: {:reply, MapSet.to_list(state.members), state}

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}

  defp poll_and_schedule(state) do
    state = state |> poll() |> Map.update!(:polls, &(&1 + 1))

    Process.send_after(self(), :poll, next_delay(state))
    state
  end

  defp next_delay(%{confirm: true, interval: interval}), do: max(div(interval, 4), 1)

  defp next_delay(%{interval: interval}),
    do: interval + :rand.uniform(max(round(interval * @jitter), 1))

  defp poll(state) do
    started = System.monotonic_time()
    result = run_provider(state)
    emit_poll(state, result, System.monotonic_time() - started)

    case result do
      {:ok, nodes} ->
        answer = MapSet.new(nodes)

        state
        |> recovered()
        |> watch_self(MapSet.member?(answer, node()))
        |> apply_answer(MapSet.delete(answer, node()))

      {:error, reason} ->
        state = failed(state, reason)

        # Members the last answer left out are kept but not dialled again:
        # the source has already said they are leaving. A fenced node
        # (no members) dials none, and cuts nothing until an answer comes.
        connect(state, Enum.reject(state.members, &Map.has_key?(state.missing, &1)))
        %{state | confirm: false}
    end
  end

  # Fencing: a node that successful answers listed and then left out twice
  # in a row has been removed from the cluster while it still runs. It
  # drops the nodes it manages and dials none until an answer lists it
  # again. A node never listed yet (booting before its registration shows
  # up) is not fenced: it dials the listed nodes as usual.
  defp watch_self(%{fence: false} = state, _listed?), do: state

  defp watch_self(%{fenced: nil} = state, true), do: %{state | self_listed: true, self_missing: 0}

  defp watch_self(state, true) do
    Logger.info(
      "#{node()} is listed again after #{state.fenced.polls} answer(s) without it: fence lifted, dialling the listed nodes"
    )

    %{state | self_listed: true, self_missing: 0, fenced: nil}
  end

  defp watch_self(%{self_listed: false} = state, false), do: state

  defp watch_self(%{fenced: nil} = state, false) do
    missing = state.self_missing + 1

    if missing >= @removal_grace,
      do: %{
        state
        | self_missing: missing,
          fenced: %{nodes: state.members, polls: missing, logged: false}
      },
      else: %{state | self_missing: missing}
  end

  defp watch_self(state, false), do: update_in(state.fenced.polls, &(&1 + 1))

  defp apply_answer(%{fenced: %{}} = state, listed), do: cut_off(state, listed)

  defp apply_answer(state, listed) do
    connected = MapSet.new(list_nodes(state))
    gone = MapSet.difference(state.members, listed)

    {removed, missing} =
      Enum.reduce(gone, {[], %{}}, fn node, {removed, missing} ->
        count = Map.get(state.missing, node, 0) + 1

        cond do
          not state.disconnect_removed and not MapSet.member?(connected, node) ->
            {[node | removed], missing}

          not state.disconnect_removed ->
            {removed, Map.put(missing, node, count)}

          count >= @removal_grace ->
            {[node | removed], missing}

          true ->
            {removed, Map.put(missing, node, count)}
        end
      end)

    if state.disconnect_removed, do: disconnect(state, removed, :departed)
    members = MapSet.union(listed, MapSet.new(Map.keys(missing)))
    connect(state, listed)

    first_miss? =
      Enum.any?(missing, fn {node, count} ->
        count == 1 and not Map.has_key?(state.missing, node)
      end)

    # The answer that first leaves out the local node (after it was
    # listed) brings the next poll forward too, so a fence starts as soon
    # as a removed peer would be dropped.
    self_first_miss? = state.fence and state.self_missing == 1

    %{
      state
      | members: members,
        missing: missing,
        confirm: (state.disconnect_removed and first_miss?) or self_first_miss?
    }
  end

  # While fenced: the nodes managed when the fence started, and any node an
  # answer lists, are disconnected on every successful poll that finds a
  # connection to them up (a peer that still counts this node as a member
  # may dial it).
  defp cut_off(state, listed) do
    managed = MapSet.union(state.fenced.nodes, listed)
    connected = state |> list_nodes() |> Enum.filter(&MapSet.member?(managed, &1))
    method = if connected == [], do: :none, else: drop_all(state, managed, connected)

    if not state.fenced.logged do
      Logger.warning(
        "fencing #{node()}: successful answers listed it before and two in a row have left it out; " <>
          "#{cut(method, connected)}, and dialling none until an answer lists it",
        nodes: inspect(connected, limit: 20)
      )
    end

    %{
      state
      | members: MapSet.new(),
        missing: %{},
        confirm: false,
        fenced: %{state.fenced | nodes: managed, logged: true}
    }
  end

  defp cut(:none, _), do: "no node of the topology was connected"

  defp cut(:global, nodes),
    do: "disconnected #{length(nodes)} node(s) in one step (global:disconnect/0)"

  defp cut(:each, nodes), do: "disconnected #{length(nodes)} node(s)"

  # `:global.disconnect/0` (OTP 25.1+) drops every connection global knows
  # at once and tells the other nodes that only this node leaves, so that
  # global's prevent_overlapping_partitions cuts no link between two of
  # them; one disconnect after the other can. It is used only when it would
  # cut no node this engine does not manage and the disconnect MFA is the
  # default one; otherwise, and for what it leaves (hidden nodes), each
  # node goes through the disconnect MFA (libcluster's disconnect_nodes).
  defp drop_all(state, managed, connected) do
    method =
      if global_disconnect?(state, managed) do
        emit(state, :disconnect, %{count: length(connected)}, %{
          topology: state.topology,
          nodes: connected
        })

        :global.disconnect()
        :global
      else
        :each
      end

    rest = state |> list_nodes() |> Enum.filter(&(&1 in connected))
    disconnect(state, rest)
    if method == :global and rest == [], do: :global, else: :each
  catch
    # global not running (e.g. stopped by the application): one by one.
    :exit, _ ->
      disconnect(state, connected)
      :each
  end

  defp global_disconnect?(state, managed) do
    state.disconnect == Defaults.disconnect() and
      function_exported?(:global, :disconnect, 0) and
      Process.whereis(:global_name_server) != nil and
      Enum.all?(Node.list(), &MapSet.member?(managed, &1))
  end

  defp recovered(%{failing: nil} = state), do: state

  defp recovered(state) do
    Logger.info("membership source answers again after #{state.failing.polls} failed poll(s)")
    %{state | failing: nil}
  end

  defp failed(%{failing: nil} = state, reason) do
    Logger.warning(
      "membership source failed: #{format_reason(reason)}; keeping the #{MapSet.size(state.members)} known member(s) until it answers again",
      reason: inspect(reason)
    )

    %{state | failing: %{reason: reason, polls: 1}}
  end

  defp failed(state, _reason), do: update_in(state.failing.polls, &(&1 + 1))

  # The published package's words, which existing log alerts match.
  defp format_reason({:unexpected_response, response}),
    do: "Unexpected response from resolver: #{inspect(response, limit: 5)}"

  defp format_reason(reason), do: inspect(reason)

  # Runs the provider in its own process so that a hung or crashing
  # provider costs at most :poll_timeout and never takes the engine down.
  defp run_provider(%{poll: poll, poll_timeout: timeout}) do
    # The provider's own log lines carry the engine's metadata (topology).
    metadata = Logger.metadata()

    {pid, ref} =
      spawn_monitor(fn ->
        Logger.metadata(metadata)
        exit({:poll_result, poll.()})
      end)

    receive do
      {:DOWN, ^ref, :process, ^pid, {:poll_result, {:ok, nodes}}} when is_list(nodes) ->
        {:ok, nodes}

      {:DOWN, ^ref, :process, ^pid, {:poll_result, {:error, _} = error}} ->
        error

      {:DOWN, ^ref, :process, ^pid, {:poll_result, other}} ->
        {:error, {:unexpected_response, other}}

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:error, {:provider_crashed, reason}}
    after
      timeout ->
        Process.exit(pid, :kill)
        receive do: ({:DOWN, ^ref, :process, ^pid, _} -> :ok)
        {:error, :poll_timeout}
    end
  end

  defp connect(state, nodes) do
    connected = MapSet.new(list_nodes(state))
    todo = nodes |> Enum.reject(&(&1 == node() or MapSet.member?(connected, &1)))

    todo
    |> Task.async_stream(&connect_one(state, &1),
      timeout: state.connect_timeout,
      on_timeout: :kill_task,
      max_concurrency: 64,
      ordered: false
    )
    |> Stream.run()
  end

  defp connect_one(state, node) do
    started = System.monotonic_time()
    result = do_connect(state, node)

    emit(state, :connect, %{duration: System.monotonic_time() - started}, %{
      topology: state.topology,
      node: node,
      result: result
    })

    result
  end

  defp do_connect(%{connect: connect} = state, node) do
    if state.libcluster do
      apply(@libcluster, :connect_nodes, [state.topology, connect, state.list_nodes, [node]])
    else
      {m, f, a} = connect
      result = apply(m, f, a ++ [node])
      if state.log_results, do: log_connect(node, result)
      result
    end
  catch
    kind, reason ->
      Logger.warning("connecting #{node} failed: #{Exception.format_banner(kind, reason)}")
  end

  defp disconnect(state, nodes, why \\ :fenced)

  defp disconnect(_state, [], _why), do: :ok

  defp disconnect(state, nodes, why) do
    emit(state, :disconnect, %{count: length(nodes)}, %{topology: state.topology, nodes: nodes})
    disconnect = departure_mfa(state, why)

    if state.libcluster do
      apply(@libcluster, :disconnect_nodes, [state.topology, disconnect, state.list_nodes, nodes])
    else
      connected = MapSet.new(list_nodes(state))
      {m, f, a} = disconnect

      for node <- nodes, MapSet.member?(connected, node) do
        result = apply(m, f, a ++ [node])

        if state.log_results,
          do: Logger.info("disconnected from #{node} (#{inspect(result)})", node: node)
      end
    end
  end

  # A node that left the answer while its connection is up is asked to
  # leave the cluster itself, with global:disconnect/0 on it: then global
  # on the remaining nodes cuts no link between two of them, as it may when
  # this node alone disconnects a node that others still hold (global's
  # prevent_overlapping_partitions then drops the departed node everywhere
  # anyway). Only with the default disconnect MFA, and while that option
  # is on; a node that has not gone after `@leave_wait` ms is disconnected
  # as before.
  defp departure_mfa(%{disconnect: disconnect}, why) do
    if why == :departed and disconnect == Defaults.disconnect() and
         Application.get_env(:kernel, :prevent_overlapping_partitions, true) and
         Application.get_env(:kernel, :connect_all, true) != false,
       do: {__MODULE__, :leave, [@leave_wait]},
       else: disconnect
  end

  @doc false
  # The disconnect MFA of a departed node (see departure_mfa/2); returns
  # what :erlang.disconnect_node/1 would.
  @spec leave(timeout(), node()) :: boolean() | :ignored
  def leave(wait, node) do
    # Monitoring or sending to a node that is not connected would dial it.
    if node in :erlang.nodes(:connected), do: ask_to_leave(wait, node), else: true
  end

  defp ask_to_leave(wait, node) do
    true = :erlang.monitor_node(node, true)
    :erpc.cast(node, :global, :disconnect, [])

    receive do
      {:nodedown, ^node} -> true
    after
      wait ->
        :erlang.monitor_node(node, false)
        result = :erlang.disconnect_node(node)
        receive do: ({:nodedown, ^node} -> :ok), after: (0 -> :ok)
        result
    end
  end

  defp log_connect(node, true), do: Logger.info("connected to #{node}", node: node)

  defp log_connect(node, result),
    do: Logger.warning("unable to connect to #{node}: #{inspect(result)}", node: node)

  defp list_nodes(%{list_nodes: {m, f, a}}), do: apply(m, f, a)

  defp emit_poll(state, {:ok, nodes}, duration),
    do:
      emit(state, :poll, %{duration: duration, nodes: length(nodes)}, %{
        topology: state.topology,
        result: :ok
      })

  defp emit_poll(state, {:error, reason}, duration),
    do:
      emit(state, :poll, %{duration: duration, nodes: 0}, %{
        topology: state.topology,
        result: :error,
        reason: reason
      })

  # :telemetry is optional: called through apply/3 only when it is loaded.
  defp emit(%{telemetry: false}, _event, _measurements, _metadata), do: :ok

  defp emit(_state, event, measurements, metadata) do
    apply(:telemetry, :execute, [[:libcluster_dynamic_srv, event], measurements, metadata])
    :ok
  catch
    _, _ -> :ok
  end
end
