defmodule Bench.MeshFloor do
  @moduledoc false
  # Part F: what a full mesh of N VMs on this host costs when nothing
  # contends, the floor under part B's times. The same N VMs as part B
  # (DynamicSrv.Epmd, one dnsmasq, OTP's defaults, Logger level info), no
  # strategy: the bench itself joins them one step at a time and waits,
  # after each step, until the nodes it joined see every node joined so
  # far (global's transitive connects done) before the next.
  #
  #   star: node i connects to node 1, for i = 2..N, one at a time;
  #   tree: the nodes of each block of 10 join the block's first node one
  #         at a time, then each block's first node joins node 1, one
  #         block at a time.
  #
  # The VMs' CPU over the whole join, divided by the host's cores, bounds
  # from below the time of any start that does the same work: a start
  # where every strategy runs at once adds work (polls, contention), it
  # cannot take less.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.Test.SharedStart

  @block 10
  @step_timeout_ms 60_000
  @idle_ms 5_000

  def run(sizes, runs) do
    Report.emit("""
    == F. The mesh's own cost: joined one step at a time (#{runs} runs per size and order) ==

    """)

    cores = System.schedulers_online()

    rows =
      for n <- sizes, order <- [:star, :tree] do
        results = for round <- 1..runs, do: run_once(n, order, round)
        row(n, order, results, cores)
      end

    Report.emit(
      Report.table(
        [
          "N",
          "order",
          "clean runs",
          "join ms (median)",
          "per run",
          "VMs' CPU s (median)",
          "per run",
          "idle CPU s/s",
          "work s (median)",
          "work ms per connection",
          "floor s"
        ],
        rows
      )
    )

    Report.emit("""

    "join ms": from the first step to the last node's full mesh, every step waited for. \
    "VMs' CPU": user and system time of all node VMs over the join (from /proc). "idle": \
    what the booted VMs use per second doing nothing, measured over #{div(@idle_ms, 1000)} s \
    before the join; "work": the CPU beyond that over the join (per connection: over \
    N(N-1)/2). "floor": work / (#{cores} cores - idle), the least wall time in which any \
    start of N VMs on this host does the same work. A run is clean when no node logged an \
    overlap line or a failed connect, and none saw a nodedown.

    """)
  end

  defp run_once(n, order, round) do
    boot = fn -> SharedStart.boot(n, "floor#{n}#{order}r#{round}.service.consul") end
    Report.cluster_run("N=#{n} #{order} run #{round}", boot, &measure_join(&1, order))
  end

  defp measure_join(cluster, order) do
    idle = idle_rate(cluster)
    cluster = %{cluster | at: System.os_time(:microsecond)}
    cpu_before = SharedStart.cpu_seconds(cluster)
    started = System.monotonic_time(:millisecond)
    :ok = join(cluster, order)
    join_ms = System.monotonic_time(:millisecond) - started
    cpu = SharedStart.cpu_seconds(cluster) - cpu_before
    reports = SharedStart.await_mesh(cluster, 10_000)
    summary = SharedStart.summary(cluster, reports)
    # The join's own work: what the VMs used beyond their idle rate.
    work = cpu - idle * join_ms / 1000
    Map.merge(summary, %{join_ms: join_ms, cpu_s: cpu, idle: idle, work_s: work})
  end

  # CPU seconds per second the booted VMs use doing nothing (timers, the
  # probe), over @idle_ms.
  defp idle_rate(cluster) do
    before = SharedStart.cpu_seconds(cluster)
    Process.sleep(@idle_ms)
    (SharedStart.cpu_seconds(cluster) - before) * 1000 / @idle_ms
  end

  # Each step: who dials, the nodes joined by it, to whom, how many nodes
  # then form the joined part. Node numbers are 1-based, as the records
  # name them.
  defp join(cluster, :star) do
    Enum.each(2..cluster.n, fn i -> step(cluster, i, [i], 1, i) end)
  end

  defp join(cluster, :tree) do
    blocks = Enum.chunk_every(1..cluster.n, @block)

    Enum.each(blocks, fn [first | rest] ->
      rest |> Enum.with_index(2) |> Enum.each(fn {i, k} -> step(cluster, i, [i], first, k) end)
    end)

    blocks
    |> Enum.drop(1)
    |> Enum.reduce(length(hd(blocks)), fn block, joined ->
      joined = joined + length(block)
      step(cluster, hd(block), block, 1, joined)
      joined
    end)

    :ok
  end

  # `dialer` connects to node `to`; then every node of `nodes` must see
  # `size - 1` peers.
  defp step(cluster, dialer, nodes, to, size) do
    peer = ~s|:"node-#{to}@#{cluster.svc}"|
    true = eval(cluster, dialer, "Node.connect(#{peer})")

    wait = """
    deadline = System.monotonic_time(:millisecond) + #{@step_timeout_ms}

    Stream.repeatedly(fn -> Process.sleep(10) end)
    |> Enum.find_value(fn _ ->
      cond do
        length(Node.list()) >= #{size - 1} -> :ok
        System.monotonic_time(:millisecond) > deadline -> {:timeout, length(Node.list())}
        true -> nil
      end
    end)
    """

    nodes
    |> Task.async_stream(&eval(cluster, &1, wait), timeout: @step_timeout_ms + 20_000)
    |> Enum.each(fn {:ok, :ok} -> :ok end)

    :ok
  end

  defp eval(cluster, i, code),
    do: DynamicSrv.Test.Node.eval(Enum.at(cluster.nodes, i - 1), code, @step_timeout_ms + 10_000)

  defp row(n, order, results, cores) do
    ok = Enum.reject(results, &Map.has_key?(&1, :error))
    clean = Enum.filter(ok, &(&1.overlap == 0 and &1.failed == 0 and &1.downs == 0))
    pairs = n * (n - 1) / 2
    cpu = median(Enum.map(ok, & &1.cpu_s))
    work = median(Enum.map(ok, & &1.work_s))
    idle = median(Enum.map(ok, & &1.idle))

    [
      "#{n}",
      "#{order}",
      "#{length(clean)}/#{length(results)}",
      fmt_int(median(Enum.map(ok, & &1.join_ms))),
      Enum.map_join(results, "/", &(Map.get(&1, :join_ms) || "failed")),
      fmt_float(cpu),
      Enum.map_join(ok, "/", &fmt_float(&1.cpu_s)),
      fmt_float(idle),
      fmt_float(work),
      fmt_float(work && work * 1000 / pairs),
      fmt_float(work && work / (cores - idle))
    ]
  end
end
