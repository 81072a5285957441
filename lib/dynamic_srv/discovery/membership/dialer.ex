defmodule DynamicSrv.Membership.Dialer do
  @moduledoc false
  # Which nodes to dial, and how many connection setups to have in flight.
  #
  # A node that is connected to none of the wanted nodes joins the cluster
  # through one of them, the first by name order, one setup at a time. With
  # OTP's `connect_all`, `global` then connects it to every node of that
  # node's partition, and every node of the partition to it. Every node
  # dialling every other at once instead merges partitions of any size with
  # each other, and each merge of partitions of a and b nodes makes
  # `global` start a x b setups at once, unbounded: past what the host can
  # finish within `net_setuptime`, one fails, `global` counts a failed
  # connect as a lost connection, and `prevent_overlapping_partitions`
  # turns it into cuts across the cluster. Joining one node at a time to
  # one partition keeps each burst to the size of that partition.
  #
  # A node that is connected to some wanted node leaves the rest to
  # `global` while its connections grow. Once they have not grown for
  # `:grace` ms (partitions that answers listing different subsets left
  # apart, a node that came up late, a node waiting for `global`), it
  # dials the wanted nodes still not connected, from one side per pair:
  # the node whose name sorts first dials at once, the other once the peer
  # has stayed unconnected for `:grace` ms. With `global`'s transitive
  # connects (`:transitive`, OTP's `connect_all`), one setup at a time: a
  # single connection merges two partitions, and more only add merges
  # that wait for `global`'s locks. Without them, every node needs its own
  # setup, paced by a window that adapts to how they go, as TCP's
  # congestion window does: it starts at `@initial_window`, grows by one
  # for each setup that succeeds (by 1/window past the threshold), and a
  # setup that fails slowly (it took `slow/1` or longer: 8 times the
  # quickest seen, at least 1 s) halves it. A quick failure (nothing
  # listens on the port yet) says nothing about load. A node whose setup
  # failed is not dialled again before the next poll (`retry/1`).
  #
  # This module only decides; the engine starts and watches the setups.

  @initial_window 8
  @threshold 32
  @max_window 64
  @slow_ms 1_000

  defstruct window: @initial_window,
            threshold: @threshold,
            wanted: MapSet.new(),
            # node => when it was first wanted while not connected (ms)
            waiting: %{},
            # ref => {node, pid, started_ms}
            in_flight: %{},
            # nodes whose last setup failed, not dialled before the next poll
            held: MapSet.new(),
            # nodes whose setups keep failing (logged once, when it starts)
            failing_nodes: MapSet.new(),
            one_side: true,
            # global connects each new peer's partition (connect_all)
            transitive: true,
            grace: 2_000,
            # how many wanted nodes were connected, and since when (ms)
            joined: 0,
            joined_since: nil,
            # the quickest setup seen, ms
            quickest: nil,
            # setups started and failed since start, for benchmarks
            started: 0,
            failed: 0

  @type t :: %__MODULE__{}

  @doc false
  @spec new(keyword()) :: t()
  def new(opts), do: struct!(__MODULE__, opts)

  @doc false
  # The nodes to keep connected from now on; those no longer wanted are
  # forgotten (a setup in flight for one of them runs to its end).
  @spec want(t(), Enumerable.t(), integer()) :: t()
  def want(dialer, nodes, now) do
    wanted = MapSet.new(nodes)
    waiting = Map.new(wanted, &{&1, Map.get(dialer.waiting, &1, now)})

    %{
      dialer
      | wanted: wanted,
        waiting: waiting,
        failing_nodes: MapSet.intersection(dialer.failing_nodes, wanted)
    }
  end

  @doc false
  # A new poll: nodes held after a failure may be dialled again.
  @spec retry(t()) :: t()
  def retry(dialer), do: %{dialer | held: MapSet.new()}

  @doc false
  # The nodes to dial now, given the nodes connected, and the dialer with
  # the waiting times of connected nodes reset.
  @spec next(t(), [node()], integer()) :: {[node()], t()}
  def next(dialer, connected, now) do
    connected = MapSet.new(connected)
    busy = for {_ref, {node, _pid, _at}} <- dialer.in_flight, into: MapSet.new(), do: node

    # A connected node waits again from now if its connection drops.
    waiting =
      Map.new(dialer.waiting, fn {node, since} ->
        if MapSet.member?(connected, node), do: {node, now}, else: {node, since}
      end)

    dialer = %{dialer | waiting: waiting} |> progress(connected, now)

    candidates =
      for node <- dialer.wanted,
          node != node(),
          not MapSet.member?(connected, node),
          not MapSet.member?(busy, node),
          not MapSet.member?(dialer.held, node),
          do: node

    {pick(dialer, candidates, now), dialer}
  end

  # How many wanted nodes are connected, and since when that number holds.
  defp progress(dialer, connected, now) do
    joined = Enum.count(dialer.wanted, &MapSet.member?(connected, &1))

    if joined == dialer.joined and dialer.joined_since != nil,
      do: dialer,
      else: %{dialer | joined: joined, joined_since: now}
  end

  # Without distribution (stand-in MFAs in tests) every node is dialled.
  defp pick(%{one_side: false} = dialer, candidates, _now),
    do: candidates |> Enum.shuffle() |> Enum.take(free(dialer))

  # Alone: join through the first node by name, one setup at a time.
  defp pick(%{joined: 0} = dialer, candidates, _now), do: first_by_name(dialer, candidates)

  # Joined: global brings the partition while the connections grow. Then,
  # with global's transitive connects, one setup at a time (one connection
  # between two partitions is enough for global to merge them); without
  # them, the window.
  defp pick(dialer, candidates, now) do
    mine = Enum.filter(candidates, &my_turn?(dialer, &1, now))

    cond do
      now - dialer.joined_since < dialer.grace -> []
      dialer.transitive -> first_by_name(dialer, mine)
      true -> mine |> Enum.shuffle() |> Enum.take(free(dialer))
    end
  end

  defp first_by_name(%{in_flight: in_flight}, candidates) when in_flight == %{},
    do: candidates |> Enum.sort() |> Enum.take(1)

  defp first_by_name(_dialer, _candidates), do: []

  defp free(dialer), do: max(trunc(dialer.window) - map_size(dialer.in_flight), 0)

  # The node whose name sorts first dials; the other once the peer has
  # stayed unconnected for `:grace` ms.
  defp my_turn?(dialer, node, now),
    do: node() < node or now - Map.get(dialer.waiting, node, now) >= dialer.grace

  @doc false
  @spec started(t(), node(), reference(), pid(), integer()) :: t()
  def started(dialer, node, ref, pid, now),
    do: %{
      dialer
      | in_flight: Map.put(dialer.in_flight, ref, {node, pid, now}),
        started: dialer.started + 1
    }

  @doc false
  @spec in_flight(t(), reference()) :: {:ok, {node(), pid(), integer()}} | :error
  def in_flight(dialer, ref), do: Map.fetch(dialer.in_flight, ref)

  @doc false
  # A setup ended: `:ok` (the node is connected, whoever made the
  # connection) or `:failed`. Returns the dialer and what to log: the
  # first failure of a run, the success that ends one, else nothing.
  @spec finished(t(), reference(), :ok | :failed, integer()) ::
          {t(), :first_failure | :recovered | nil}
  def finished(dialer, ref, outcome, now) do
    case Map.pop(dialer.in_flight, ref) do
      {nil, _} ->
        {dialer, nil}

      {{node, _pid, started}, in_flight} ->
        dialer = %{dialer | in_flight: in_flight}
        settle(dialer, node, outcome, now - started)
    end
  end

  defp settle(dialer, node, :ok, took) do
    event = if MapSet.member?(dialer.failing_nodes, node), do: :recovered

    dialer = %{
      dialer
      | quickest: min(dialer.quickest || took, took),
        failing_nodes: MapSet.delete(dialer.failing_nodes, node)
    }

    {grow(dialer), event}
  end

  defp settle(dialer, node, :failed, took) do
    dialer = if took >= slow(dialer), do: shrink(dialer), else: dialer
    first = if MapSet.member?(dialer.failing_nodes, node), do: nil, else: :first_failure

    {%{
       dialer
       | held: MapSet.put(dialer.held, node),
         failing_nodes: MapSet.put(dialer.failing_nodes, node),
         failed: dialer.failed + 1
     }, first}
  end

  defp slow(%{quickest: quickest}), do: max(@slow_ms, 8 * (quickest || 0))

  defp grow(dialer) do
    growth = if dialer.window < dialer.threshold, do: 1, else: 1 / dialer.window
    %{dialer | window: min(dialer.window + growth, @max_window)}
  end

  defp shrink(dialer) do
    half = max(dialer.window / 2, 1)
    %{dialer | window: half, threshold: half}
  end
end
