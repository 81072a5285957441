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
  | `:confirm` | `(node() -> :present \\| :absent \\| {:error, reason})`: asks the source about one node by its own name (see the rules) | none |
  | `:topology` | a name for logs and libcluster | `:dynamic_srv` |
  | `:interval` | ms between polls (a jitter of up to 10% is added) | `5000` |
  | `:disconnect_removed` | disconnect nodes that left the answer | `true` |
  | `:members` | nodes already known (a list or a MapSet), counted as members from the start, so that the rules below drop one the answers leave out | `[]` |
  | `:fence` | fence the local node when the source says it is gone (see the rules) | with a `:confirm` function (a source that names nodes one by one, as SRV does), `:disconnect_removed`; else `false` |
  | `:connect` / `:disconnect` / `:list_nodes` | MFAs, the node appended as last argument | `:net_kernel.connect_node/1`, `:erlang.disconnect_node/1`, `:erlang.nodes(:connected)` |
  | `:connect_timeout` | how long one connection setup may take before it counts as failed, in ms | `net_setuptime` + 1 s (8 s) |
  | `:poll_timeout` | how long the provider (and the confirmations) may take, in ms | `30_000` |
  | `:log_results` | log each connect and disconnect at info level | `true` |
  | `:log_as` | `:libcluster`: every line goes through libcluster's `Cluster.Logger` when it is loaded (`[libcluster:<topology>]` and its `debug: true` switch), else carries the same prefix; `:plain`: Logger as is | `:plain` |
  | `:name` | the process name | none |

  ## Rules

  * The first poll runs at start, then every `:interval`.
  * Every node an answer lists (and every member confirmed by its own
    name) is to be connected, and the engine starts no more connection
    setups than the host can finish. A node connected to none of them
    joins through one, the first by name order, one setup at a time;
    `global` (with OTP's default `connect_all`) then connects it to that
    node's whole partition. While its connections keep growing, that is
    all it dials. Once they have not grown for two polling intervals, it
    dials the listed nodes still not connected (from one side per pair:
    the node whose name sorts first dials at once, the other once the
    peer has stayed unconnected for two intervals): one at a time, as one
    connection is enough for `global` to merge two partitions; without
    `connect_all`, with at most a window of setups in flight, which grows
    while they succeed and halves when one fails slowly, as TCP's
    congestion window does (from 8, at most 64). A node whose setup
    failed is dialled again on the next poll; its failure is logged when
    it starts and when it ends, at debug level in between. The local node
    is never dialled.
  * **An answer is not trusted to list everyone.** DNS servers often
    answer with a subset of the records (Consul trims UDP answers without
    setting TC, Route 53 returns at most 8 records at random). With a
    `:confirm` function (the SRV strategy and provider have one), a member
    an answer leaves out is asked about by its own name at once, in the
    same poll, concurrently: confirmed `:present`, it stays a member and
    stays connected (and is dialled if its connection dropped); `:absent`,
    it is dropped at once; an error (the lookup failed) keeps it while its
    connection is up, and nobody is disconnected on it. Only members the
    answer leaves out cost a query; an answer that lists everyone costs
    none, but the first answer that lists the local node also asks about
    the local node: absent, the source's per-node names do not exist, and
    from then on an `:absent` counts as an error: a member stays while its
    connection is up, and nobody is fenced.
  * Without `:confirm` (providers whose answers are whole: a list, UDP
    announcements, A records), a node is disconnected only when two
    successful answers in a row leave it out (a grace against an answer
    that flaps); the answer that first misses a node brings the next poll
    forward to a quarter of `:interval`, so a node that really left is
    dropped within about 1.25 intervals. With `disconnect_removed: false`
    a node that left is never disconnected, and forgotten once its
    connection is gone.
  * A node dropped that way while its connection is up is asked to leave
    the cluster itself (`:global.disconnect/0` run on it), and disconnected
    as usual if it has not gone within 1 s. `global`'s
    `prevent_overlapping_partitions` (on by default since OTP 25) would
    drop it from every node anyway; when it alone leaves, in one step, the
    nodes that stay lose no link between them. Only with the default
    disconnect MFA and while that option (and `connect_all`) is on.
  * A failed poll (timeout, SERVFAIL, refused, network, a crashed provider)
    changes nothing: the last membership stands and the nodes the last
    answer listed are still reconnected (a node that answer left out is
    kept, not dialled again). The failure is logged when it starts and
    when it ends. A failing source is polled less often: the interval
    doubles with each failure in a row, up to 4 intervals, at a random
    point of its second half; the first answer brings it back.
  * With `fence: true`, the engine watches the local node in the answers.
    Once a successful answer has listed it, the source saying it is gone
    (with `:confirm`: an answer leaves it out and its own name is absent;
    without: two successful answers in a row leave it out) means it has
    been removed while it runs: it disconnects every node it manages (its
    members, and any node an answer lists) and dials none, and cuts any
    such connection made to it, until an answer lists it again. The first
    connections go in one step through `:global.disconnect/0` (OTP 25.1+)
    when the disconnect MFA is the default one and `global` knows no node
    outside the topology, so that `global` on the other nodes cuts no link
    between two of them; otherwise one by one through the disconnect MFA.
    A node not listed yet (booting before its registration shows up) dials
    as usual; failed polls and failed confirmations neither start nor end
    a fence, nor cut anything. The fence is logged once when it starts (a
    warning) and once when it ends.
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
  alias DynamicSrv.Membership.Dialer

  @libcluster Cluster.Strategy
  @removal_grace 2
  @leave_wait 1_000
  @jitter 0.1
  # What a poll's process needs of the engine's state.
  @poll_keys [:poll, :confirm, :members, :disconnect_removed, :fence, :poll_timeout] ++
               [:self_listed, :fenced, :node_names]
  # A failing source is polled at most this many intervals apart.
  @max_backoff 4
  # Confirmations asked at once, at most.
  @confirm_concurrency 16
  # The other side of a pair dials after this many polling intervals.
  @other_side_polls 2

  defstruct [
    :poll,
    :confirm,
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
    :dialer,
    # :cluster_logger (libcluster's), :prefix (libcluster's, without it) or :plain
    :log_as,
    fence: false,
    members: MapSet.new(),
    # Members the last answers left out (without :confirm): answers in a row.
    left_out: %{},
    # The failing source: its first reason and how many polls have failed.
    source_failure: nil,
    # Without :confirm, the next poll comes early after a first miss.
    recheck: false,
    # Whether the source's per-node names exist: :unchecked, :exist, :missing.
    node_names: :unchecked,
    # The local node's own place in the answers: whether a successful
    # answer has listed it, how many successful answers in a row have left
    # it out since, and, while fenced, the nodes cut off.
    self_listed: false,
    self_left_out: 0,
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

  # Unset, a source that can be asked about one node by name (SRV) fences
  # as it disconnects: who keeps the connections of nodes that left keeps
  # its own too.
  defp fence?(opts) do
    case Keyword.get(opts, :fence) do
      nil -> Keyword.get(opts, :disconnect_removed, true) and Keyword.get(opts, :confirm) != nil
      fence -> fence
    end
  end

  @impl true
  def init(opts) do
    # An exit of a linked caller is a message to ignore; the parent's exit
    # still stops the engine (GenServer handles it).
    Process.flag(:trap_exit, true)
    interval = Keyword.get(opts, :interval, Defaults.polling_interval())

    state = %__MODULE__{
      poll: Keyword.fetch!(opts, :poll),
      confirm: Keyword.get(opts, :confirm),
      topology: Keyword.get(opts, :topology, :dynamic_srv),
      interval: interval,
      disconnect_removed: Keyword.get(opts, :disconnect_removed, true),
      connect: Keyword.get(opts, :connect, Defaults.connect()),
      disconnect: Keyword.get(opts, :disconnect, Defaults.disconnect()),
      list_nodes: Keyword.get(opts, :list_nodes, Defaults.list_nodes()),
      connect_timeout: Keyword.get(opts, :connect_timeout, default_connect_timeout()),
      poll_timeout: Keyword.get(opts, :poll_timeout, 30_000),
      log_results: Keyword.get(opts, :log_results, true),
      fence: fence?(opts),
      members: opts |> Keyword.get(:members, []) |> known_nodes(),
      libcluster:
        Code.ensure_loaded?(@libcluster) and function_exported?(@libcluster, :connect_nodes, 4),
      log_as: log_as(Keyword.get(opts, :log_as, :plain)),
      telemetry: Code.ensure_loaded?(:telemetry),
      # One side per pair only between distributed nodes: a VM without
      # distribution (tests with stand-in MFAs) dials everything at once.
      dialer:
        Dialer.new(
          one_side: Node.alive?(),
          transitive: Application.get_env(:kernel, :connect_all, true),
          grace: @other_side_polls * interval
        )
    }

    Logger.metadata(topology: state.topology)
    {:ok, state, {:continue, :poll}}
  end

  defp log_as(:libcluster),
    do: if(Code.ensure_loaded?(Cluster.Logger), do: :cluster_logger, else: :prefix)

  defp log_as(:plain), do: :plain

  # A handshake is given up by net_kernel after net_setuptime seconds.
  defp default_connect_timeout,
    do: (Application.get_env(:kernel, :net_setuptime, 7) + 1) * 1_000

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

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    case Dialer.in_flight(state.dialer, ref) do
      {:ok, {node, _pid, _started}} -> {:noreply, state |> dialled(ref, node, reason) |> pump()}
      :error -> {:noreply, state}
    end
  end

  def handle_info({:dial_timeout, ref}, state) do
    case Dialer.in_flight(state.dialer, ref) do
      {:ok, {node, pid, _started}} ->
        Process.demonitor(ref, [:flush])
        Process.exit(pid, :kill)
        {:noreply, state |> dialled(ref, node, :timeout) |> pump()}

      :error ->
        {:noreply, state}
    end
  end

  def handle_info(_message, state), do: {:noreply, state}

  @impl true
  def handle_call(:members, _from, state), do: {:reply, MapSet.to_list(state.members), state}

  def handle_call(_request, _from, state), do: {:reply, {:error, :unknown_call}, state}

  @impl true
  def handle_cast(_request, state), do: {:noreply, state}

  # A poll runs in a process of its own (the provider, then the
  # confirmations), so that a hung or crashing provider costs at most
  # :poll_timeout and never takes the engine down. The engine waits for it,
  # as it did before setups were paced (a poll that did not block the
  # engine was tried at 50 nodes and gained nothing).
  defp poll_and_schedule(state) do
    metadata = Logger.metadata()
    snapshot = Map.take(state, @poll_keys)
    started = System.monotonic_time()

    {pid, ref} =
      spawn_monitor(fn ->
        Logger.metadata(metadata)
        exit({:poll_result, run_poll(snapshot)})
      end)

    result =
      receive do
        {:DOWN, ^ref, :process, ^pid, reason} -> poll_result(reason)
      after
        state.poll_timeout ->
          Process.exit(pid, :kill)
          receive do: ({:DOWN, ^ref, :process, ^pid, _} -> :ok)
          {:error, :poll_timeout}
      end

    emit_poll(state, result, System.monotonic_time() - started)
    state = poll(%{state | dialer: Dialer.retry(state.dialer)}, result)
    Process.send_after(self(), :poll, next_delay(state))
    state
  end

  defp run_poll(snapshot) do
    case snapshot.poll.() do
      {:ok, nodes} when is_list(nodes) ->
        answer = MapSet.new(nodes)
        self_in? = MapSet.member?(answer, node())
        listed = MapSet.delete(answer, node())
        {:ok, nodes, confirm_left_out(snapshot, listed, self_in?)}

      {:error, _} = error ->
        error

      other ->
        {:error, {:unexpected_response, other}}
    end
  end

  defp poll_result({:poll_result, result}), do: result
  defp poll_result(reason), do: {:error, {:provider_crashed, reason}}

  defp next_delay(%{recheck: true, interval: interval}), do: max(div(interval, 4), 1)

  # Polls that fail back off: the interval doubles with each failed poll
  # in a row, up to @max_backoff times, at a random point of its second
  # half, so that polls that failed together (a DNS server overloaded by a
  # whole cluster starting at once) neither come back together nor add to
  # the load; the first answer brings the interval back.
  defp next_delay(%{source_failure: %{polls: polls}, interval: interval}) do
    span = interval * min(Integer.pow(2, polls - 1), @max_backoff)
    div(span, 2) + :rand.uniform(max(div(span, 2), 1))
  end

  defp next_delay(%{interval: interval}),
    do: interval + :rand.uniform(max(round(interval * @jitter), 1))

  defp poll(state, {:ok, nodes, verdicts}) do
    answer = MapSet.new(nodes)
    self_in? = MapSet.member?(answer, node())
    listed = MapSet.delete(answer, node())

    state
    |> recovered()
    |> check_node_names(self_in?, verdicts)
    |> watch_self(self_in?, verdicts)
    |> apply_answer(listed, verdicts)
    |> pump()
  end

  defp poll(state, {:error, reason}) do
    state = failed(state, reason)

    # Members the last answer left out are kept but not dialled again:
    # the source has already said they are leaving. A fenced node
    # (no members) dials none, and cuts nothing until an answer comes.
    wanted = Enum.reject(state.members, &Map.has_key?(state.left_out, &1))
    want(%{state | recheck: false}, wanted) |> pump()
  end

  ## Confirmations

  # Asks the source about each member the answer leaves out, and about the
  # local node when it matters (fencing, or the first check that per-node
  # names exist). Returns %{node => :present | :absent | :unknown}.
  defp confirm_left_out(%{confirm: nil}, _listed, _self_in?), do: %{}

  defp confirm_left_out(state, listed, self_in?) do
    others =
      if state.disconnect_removed,
        do: MapSet.difference(state.members, listed) |> MapSet.to_list(),
        else: []

    # Whether per-node names exist is checked on the local node at the
    # first answer that lists it. Measured at 50 nodes started at once
    # (make bench, part B, 3 runs each): with this check, 0 overlap lines
    # in every run; asked only once an answer leaves a member out, 372 to
    # 1,268 per run. Its lookups stagger each node's first setups by a DNS
    # round trip, where they would otherwise all start at one instant.
    self =
      cond do
        self_in? and state.node_names == :unchecked -> [node()]
        not self_in? and state.fence and state.self_listed and state.fenced == nil -> [node()]
        true -> []
      end

    ask(state, self ++ others)
  end

  defp ask(_state, []), do: %{}

  defp ask(state, nodes) do
    confirm = state.confirm
    metadata = Logger.metadata()

    nodes
    |> Task.async_stream(
      fn node ->
        Logger.metadata(metadata)
        {node, confirm_one(confirm, node)}
      end,
      max_concurrency: @confirm_concurrency,
      timeout: state.poll_timeout,
      on_timeout: :kill_task,
      ordered: false
    )
    |> Enum.reduce(%{}, fn
      {:ok, {node, verdict}}, acc -> Map.put(acc, node, verdict)
      {:exit, _reason}, acc -> acc
    end)
  end

  defp confirm_one(confirm, node) do
    case confirm.(node) do
      :present -> :present
      :absent -> :absent
      _error -> :unknown
    end
  catch
    _kind, _reason -> :unknown
  end

  # What the source says of `node`, with :absent read as :unknown where the
  # source's per-node names are missing.
  defp verdict(%{node_names: :missing}, verdicts, node) do
    case Map.get(verdicts, node, :unknown) do
      :absent -> :unknown
      other -> other
    end
  end

  defp verdict(_state, verdicts, node), do: Map.get(verdicts, node, :unknown)

  # The first answer that lists the local node also asks about it by
  # name: absent while listed, the source has no per-node names.
  defp check_node_names(%{node_names: :unchecked} = state, true, verdicts) do
    case Map.get(verdicts, node()) do
      :present ->
        %{state | node_names: :exist}

      :absent ->
        log(
          state,
          :warning,
          "#{node()} is listed, but its own name has no SRV or address record: " <>
            "a member an answer leaves out cannot be confirmed, so it stays while its connection is up " <>
            "(register <label>.<service> for each node to let the engine drop departed nodes at once)"
        )

        %{state | node_names: :missing}

      # Not asked, or the lookup failed: asked again on the next answer.
      _unknown ->
        state
    end
  end

  defp check_node_names(state, _self_in?, _verdicts), do: state

  ## Fencing

  # Fencing: a node that successful answers listed and that the source
  # then says is gone has been removed from the cluster while it still
  # runs. It drops the nodes it manages and dials none until an answer
  # lists it again. A node never listed yet (booting before its
  # registration shows up) is not fenced: it dials the listed nodes as
  # usual.
  defp watch_self(%{fence: false} = state, _listed?, _verdicts), do: state

  defp watch_self(%{fenced: nil} = state, true, _verdicts),
    do: %{state | self_listed: true, self_left_out: 0}

  defp watch_self(state, true, _verdicts) do
    log(
      state,
      :info,
      "#{node()} is listed again after #{state.fenced.polls} answer(s) without it: fence lifted, dialling the listed nodes"
    )

    %{state | self_listed: true, self_left_out: 0, fenced: nil}
  end

  defp watch_self(%{self_listed: false} = state, false, _verdicts), do: state

  defp watch_self(%{fenced: nil, confirm: nil} = state, false, _verdicts) do
    left_out = state.self_left_out + 1

    if left_out >= @removal_grace,
      do: fence(%{state | self_left_out: left_out}, left_out),
      else: %{state | self_left_out: left_out}
  end

  defp watch_self(%{fenced: nil} = state, false, verdicts) do
    case verdict(state, verdicts, node()) do
      :absent -> fence(state, 1)
      _present_or_unknown -> state
    end
  end

  defp watch_self(state, false, _verdicts), do: update_in(state.fenced.polls, &(&1 + 1))

  defp fence(state, polls),
    do: %{state | fenced: %{nodes: state.members, polls: polls, logged: false}}

  ## Answers

  defp apply_answer(%{fenced: %{}} = state, listed, _verdicts), do: cut_off(state, listed)

  defp apply_answer(%{confirm: confirm, disconnect_removed: true} = state, listed, verdicts)
       when confirm != nil do
    connected = MapSet.new(list_nodes(state))
    gone = MapSet.difference(state.members, listed)

    {removed, present, kept} =
      Enum.reduce(gone, {[], [], []}, fn node, {removed, present, kept} ->
        case verdict(state, verdicts, node) do
          :absent ->
            {[node | removed], present, kept}

          :present ->
            {removed, [node | present], kept}

          # Unconfirmed: kept while its connection is up, never cut for it.
          :unknown ->
            if node in connected,
              do: {removed, present, [node | kept]},
              else: {removed, present, kept}
        end
      end)

    disconnect(state, removed, :departed)
    wanted = MapSet.union(listed, MapSet.new(present))

    %{state | members: MapSet.union(wanted, MapSet.new(kept)), left_out: %{}, recheck: false}
    |> want(wanted)
  end

  defp apply_answer(state, listed, _verdicts) do
    connected = MapSet.new(list_nodes(state))
    gone = MapSet.difference(state.members, listed)

    {removed, left_out} =
      Enum.reduce(gone, {[], %{}}, fn node, {removed, left_out} ->
        count = Map.get(state.left_out, node, 0) + 1

        cond do
          not state.disconnect_removed and not MapSet.member?(connected, node) ->
            {[node | removed], left_out}

          not state.disconnect_removed ->
            {removed, Map.put(left_out, node, count)}

          count >= @removal_grace ->
            {[node | removed], left_out}

          true ->
            {removed, Map.put(left_out, node, count)}
        end
      end)

    if state.disconnect_removed, do: disconnect(state, removed, :departed)
    members = MapSet.union(listed, MapSet.new(Map.keys(left_out)))

    first_miss? =
      Enum.any?(left_out, fn {node, count} ->
        count == 1 and not Map.has_key?(state.left_out, node)
      end)

    # The answer that first leaves out the local node (after it was
    # listed) brings the next poll forward too, so a fence starts as soon
    # as a removed peer would be dropped.
    self_first_miss? = state.fence and state.self_left_out == 1

    %{
      state
      | members: members,
        left_out: left_out,
        recheck: (state.disconnect_removed and first_miss?) or self_first_miss?
    }
    |> want(listed)
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
      log(
        state,
        :warning,
        "fencing #{node()}: successful answers listed it before and the source now says it is gone; " <>
          "#{cut(method, connected)}, and dialling none until an answer lists it",
        nodes: inspect(connected, limit: 20)
      )
    end

    %{
      state
      | members: MapSet.new(),
        left_out: %{},
        recheck: false,
        fenced: %{state.fenced | nodes: managed, logged: true}
    }
    |> want([])
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
        report_cut(state, connected)
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

  # Nodes cut in one step are reported as libcluster reports its own
  # disconnects: a line each and, with libcluster, its disconnect_node event.
  defp report_cut(state, nodes) do
    for node <- nodes do
      if state.log_results,
        do: log(state, :info, "disconnected from #{inspect(node)}", node: node)

      if state.libcluster,
        do:
          emit_event(state, [:libcluster, :disconnect_node, :ok], %{duration: 0}, %{
            node: node,
            topology: state.topology
          })
    end
  end

  defp global_disconnect?(state, managed) do
    state.disconnect == Defaults.disconnect() and
      function_exported?(:global, :disconnect, 0) and
      Process.whereis(:global_name_server) != nil and
      Enum.all?(Node.list(), &MapSet.member?(managed, &1))
  end

  ## The source's failures

  defp recovered(%{source_failure: nil} = state), do: state

  defp recovered(state) do
    log(
      state,
      :info,
      "membership source answers again after #{state.source_failure.polls} failed poll(s)"
    )

    %{state | source_failure: nil}
  end

  defp failed(%{source_failure: nil} = state, reason) do
    log(
      state,
      :warning,
      "membership source failed: #{format_reason(reason)}; keeping the #{MapSet.size(state.members)} known member(s) until it answers again",
      reason: inspect(reason)
    )

    %{state | source_failure: %{reason: reason, polls: 1}}
  end

  defp failed(state, _reason), do: update_in(state.source_failure.polls, &(&1 + 1))

  # The published package's words, which existing log alerts match.
  defp format_reason({:unexpected_response, response}),
    do: "Unexpected response from resolver: #{inspect(response, limit: 5)}"

  defp format_reason(reason), do: inspect(reason)

  ## Connection setups, paced by the dialer

  defp want(state, nodes),
    do: %{state | dialer: Dialer.want(state.dialer, nodes, now())}

  # Starts the setups the dialer's window allows now.
  defp pump(state) do
    {nodes, dialer} = Dialer.next(state.dialer, list_nodes(state), now())
    state = %{state | dialer: dialer}
    Enum.reduce(nodes, state, &start_dial/2)
  end

  defp start_dial(node, state) do
    metadata = Logger.metadata()
    dial = Map.take(state, [:connect, :list_nodes, :libcluster, :topology, :telemetry])

    {pid, ref} =
      spawn_monitor(fn ->
        Logger.metadata(metadata)
        exit({:dialled, connect_one(dial, node)})
      end)

    Process.send_after(self(), {:dial_timeout, ref}, state.connect_timeout)
    %{state | dialer: Dialer.started(state.dialer, node, ref, pid, now())}
  end

  # A setup ended with `reason` (its process's exit, or :timeout). The node
  # counts as connected whoever made the connection.
  defp dialled(state, ref, node, reason) do
    result =
      case reason do
        {:dialled, result} -> result
        other -> {:exit, other}
      end

    outcome = if success?(result) or node in list_nodes(state), do: :ok, else: :failed

    {dialer, event} = Dialer.finished(state.dialer, ref, outcome, now())
    log_dial(state, node, event, result)
    %{state | dialer: dialer}
  end

  defp success?(true), do: true
  defp success?(:ok), do: true
  defp success?(_), do: false

  # libcluster logs its own connects; without it, a node that cannot be
  # reached is logged when its failures start and when it connects again,
  # at debug level in between.
  defp log_dial(%{libcluster: true}, _node, _event, _result), do: :ok
  defp log_dial(%{log_results: false}, _node, _event, _result), do: :ok

  defp log_dial(state, node, :first_failure, result),
    do:
      log(
        state,
        :warning,
        "unable to connect to #{node}: #{inspect(result)}; retrying on each poll (logged at debug level until it connects)",
        node: node
      )

  defp log_dial(state, node, :recovered, _result),
    do: log(state, :info, "connected to #{node} after failed attempts", node: node)

  defp log_dial(state, node, nil, true), do: log(state, :info, "connected to #{node}", node: node)

  defp log_dial(state, node, nil, result),
    do: log(state, :debug, "still unable to connect to #{node}: #{inspect(result)}", node: node)

  defp connect_one(dial, node) do
    started = System.monotonic_time()

    result =
      try do
        do_connect(dial, node)
      catch
        kind, reason -> {:error, Exception.format_banner(kind, reason)}
      end

    emit(dial, :connect, %{duration: System.monotonic_time() - started}, %{
      topology: dial.topology,
      node: node,
      result: result
    })

    result
  end

  defp do_connect(%{libcluster: true} = dial, node),
    do: apply(@libcluster, :connect_nodes, [dial.topology, dial.connect, dial.list_nodes, [node]])

  defp do_connect(%{connect: {m, f, a}}, node), do: apply(m, f, a ++ [node])

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
          do: log(state, :info, "disconnected from #{node} (#{inspect(result)})", node: node)
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

  defp list_nodes(%{list_nodes: {m, f, a}}), do: apply(m, f, a)

  # The strategy's lines read as libcluster's own: through its logger when
  # it is loaded (its `debug: true` switch applies), else with the same
  # prefix. The runner's lines are plain.
  defp log(state, level, message, metadata \\ [])

  defp log(%{log_as: :cluster_logger} = state, level, message, _metadata) do
    logger = Cluster.Logger

    fun =
      if level == :warning and not function_exported?(logger, :warning, 2), do: :warn, else: level

    apply(logger, fun, [state.topology, message])
  end

  defp log(%{log_as: :prefix} = state, level, message, metadata),
    do: Logger.log(level, "[libcluster:#{state.topology}] #{message}", metadata)

  defp log(_state, level, message, metadata), do: Logger.log(level, message, metadata)

  defp now, do: System.monotonic_time(:millisecond)

  defp emit_poll(state, {:ok, nodes, _verdicts}, duration),
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

  defp emit(state, event, measurements, metadata),
    do: emit_event(state, [:libcluster_dynamic_srv, event], measurements, metadata)

  defp emit_event(%{telemetry: false}, _name, _measurements, _metadata), do: :ok

  defp emit_event(_state, name, measurements, metadata) do
    apply(:telemetry, :execute, [name, measurements, metadata])
    :ok
  catch
    _, _ -> :ok
  end
end
