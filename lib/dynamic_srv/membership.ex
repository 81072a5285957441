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
  | `:connect` / `:disconnect` / `:list_nodes` | MFAs, the node appended as last argument | `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes(:connected)` |
  | `:max_dialing` | connects in flight at once | `8` |
  | `:connect_timeout` | ms after which a connect still running stops holding one of those places (it is never killed) | `15_000` |
  | `:poll_timeout` | how long the provider may take, in ms | `30_000` |
  | `:log_results` | log each connect and disconnect at info level | `true` |
  | `:name` | the process name | none |

  ## Rules

  * The first poll runs at start, then every `:interval`.
  * Every listed node that is not connected is dialled, also on later
    polls after a connection dropped. The local node is never dialled.
  * Of two nodes, one dials first: a hash of the pair picks which, the same
    on both nodes, so that about half of the peers are each node's to dial
    and two nodes never dial each other at the same moment (a crossed
    handshake fails on one side, and when that side is `global`'s own
    connect, `global` disconnects the loser from every node to prevent
    overlapping partitions). A peer that was the other node's to dial and is
    still not connected at the next poll is dialled all the same (it may
    not see this node in DNS yet, or run another strategy). A node that is
    not distributed cannot be dialled, so it dials all its peers.
  * Connects run in processes of their own, at most `:max_dialing` at once,
    while the engine goes on polling. A connect is never killed half-way
    through its handshake: `net_kernel`'s setup time (`net_setuptime`)
    bounds it. Before a queued connect starts, a node that has meanwhile
    been connected (by `global`, or by the peer) is skipped.
  * A node is disconnected only when successful answers stop listing it:
    it must be missing from two consecutive answers (a grace against an
    answer that flaps). The answer that first misses a node brings the next
    poll forward to a quarter of `:interval`, so a node that really left is
    dropped within about 1.25 intervals, not 2. With `disconnect_removed: false` it is never
    disconnected, and forgotten once its connection is gone.
  * A failed poll (timeout, SERVFAIL, refused, network, a crashed provider)
    changes nothing: the last membership stands and the nodes the last
    answer listed are still reconnected (a node that answer left out is
    kept, not dialled again). The failure is logged when it starts and
    when it ends.
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

  @libcluster Cluster.Strategy
  @removal_grace 2
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
    :max_dialing,
    :poll_timeout,
    :log_results,
    # Whether libcluster's Cluster.Strategy and :telemetry are there,
    # looked up once at start rather than on every connect.
    :libcluster,
    :telemetry,
    members: MapSet.new(),
    missing: %{},
    failing: nil,
    confirm: false,
    # Connects in flight (monitor ref => node), those past :connect_timeout
    # that still run, the nodes waiting for a place, and the peers left to
    # the other side at the last poll.
    dialing: %{},
    overdue: %{},
    queue: [],
    deferred: MapSet.new(),
    polls: 0
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
    interval = Keyword.get(opts, :interval, 5_000)

    state = %__MODULE__{
      poll: Keyword.fetch!(opts, :poll),
      topology: Keyword.get(opts, :topology, :dynamic_srv),
      interval: interval,
      disconnect_removed: Keyword.get(opts, :disconnect_removed, true),
      connect: Keyword.get(opts, :connect, {:net_kernel, :connect_node, []}),
      disconnect: Keyword.get(opts, :disconnect, {:erlang, :disconnect_node, []}),
      list_nodes: Keyword.get(opts, :list_nodes, {:erlang, :nodes, [:connected]}),
      connect_timeout: Keyword.get(opts, :connect_timeout, 15_000),
      max_dialing: Keyword.get(opts, :max_dialing, 8),
      poll_timeout: Keyword.get(opts, :poll_timeout, 30_000),
      log_results: Keyword.get(opts, :log_results, true),
      libcluster:
        Code.ensure_loaded?(@libcluster) and function_exported?(@libcluster, :connect_nodes, 4),
      telemetry: Code.ensure_loaded?(:telemetry)
    }

    Logger.metadata(topology: state.topology)
    {:ok, state, {:continue, :poll}}
  end

  @impl true
  def handle_continue(:poll, state), do: {:noreply, poll_and_schedule(state)}

  @impl true
  def handle_info(:poll, state), do: {:noreply, poll_and_schedule(state)}

  def handle_info({:DOWN, ref, :process, _pid, _reason}, state)
      when is_map_key(state.dialing, ref) or is_map_key(state.overdue, ref) do
    state = %{
      state
      | dialing: Map.delete(state.dialing, ref),
        overdue: Map.delete(state.overdue, ref)
    }

    {:noreply, pump(state)}
  end

  def handle_info({:connect_overdue, ref}, state) when is_map_key(state.dialing, ref) do
    {node, dialing} = Map.pop(state.dialing, ref)
    {:noreply, pump(%{state | dialing: dialing, overdue: Map.put(state.overdue, ref, node)})}
  end

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
        state |> recovered() |> apply_answer(MapSet.delete(MapSet.new(nodes), node()))

      {:error, reason} ->
        state = failed(state, reason)
        # Members the last answer left out are kept but not dialled again:
        # the source has already said they are leaving.
        state
        |> connect(Enum.reject(state.members, &Map.has_key?(state.missing, &1)))
        |> Map.put(:confirm, false)
    end
  end

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

    if state.disconnect_removed, do: disconnect(state, removed)
    members = MapSet.union(listed, MapSet.new(Map.keys(missing)))
    state = connect(state, listed)

    first_miss? =
      Enum.any?(missing, fn {node, count} ->
        count == 1 and not Map.has_key?(state.missing, node)
      end)

    %{
      state
      | members: members,
        missing: missing,
        confirm: state.disconnect_removed and first_miss?
    }
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

  defp format_reason({:unexpected_response, response}),
    do: "unexpected response from the resolver: #{inspect(response, limit: 5)}"

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

  # Queues the nodes to dial: those of the listed, unconnected nodes that
  # are this node's to dial first, and those the other side has left
  # undialled since the last poll.
  defp connect(state, nodes) do
    connected = MapSet.new(list_nodes(state))
    busy = MapSet.new(Map.values(state.dialing) ++ Map.values(state.overdue) ++ state.queue)

    todo =
      nodes
      |> Enum.uniq()
      |> Enum.reject(&(&1 == node() or MapSet.member?(connected, &1) or MapSet.member?(busy, &1)))

    {now, later} =
      Enum.split_with(todo, &(dials_first?(&1) or MapSet.member?(state.deferred, &1)))

    pump(%{state | queue: state.queue ++ now, deferred: MapSet.new(later)})
  end

  @doc false
  # Whether the local node dials `peer` first. The same answer, mirrored,
  # on the peer: :erlang.phash2/1 is the same on every node and OTP release.
  @spec dials_first?(node(), node()) :: boolean()
  def dials_first?(peer, local \\ node())

  def dials_first?(_peer, :nonode@nohost), do: true

  def dials_first?(peer, local) do
    {low, high} = if local < peer, do: {local, peer}, else: {peer, local}
    first = if rem(:erlang.phash2({low, high}), 2) == 0, do: low, else: high
    first == local
  end

  # Starts queued connects while there is room; a node connected meanwhile
  # is skipped.
  defp pump(%{queue: []} = state), do: state

  defp pump(state) when map_size(state.dialing) >= state.max_dialing, do: state

  defp pump(state) do
    connected = MapSet.new(list_nodes(state))
    {start, rest} = Enum.split(state.queue, state.max_dialing - map_size(state.dialing))

    dialing =
      for node <- start, not MapSet.member?(connected, node), into: state.dialing do
        {dial(state, node), node}
      end

    pump(%{state | queue: rest, dialing: dialing})
  end

  # One connect in a process of its own, monitored and never killed.
  defp dial(state, node) do
    metadata = Logger.metadata()

    {_pid, ref} =
      spawn_monitor(fn ->
        Logger.metadata(metadata)
        connect_one(state, node)
      end)

    Process.send_after(self(), {:connect_overdue, ref}, state.connect_timeout)
    ref
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

  defp disconnect(_state, []), do: :ok

  defp disconnect(%{disconnect: disconnect} = state, nodes) do
    emit(state, :disconnect, %{count: length(nodes)}, %{topology: state.topology, nodes: nodes})

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
