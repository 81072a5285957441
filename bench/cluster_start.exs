defmodule Bench.ClusterStart do
  @moduledoc false
  # Part B: N real nodes, each on its own ERL_DIST_PORT with no epmd, all
  # listed in one dnsmasq (its default of 20 TCP connections at once; the
  # service's SRV answer needs TCP from about 25 nodes on). The VMs boot
  # first; then every node is told one wall-clock instant and starts
  # Cluster.Strategy.DynamicSrv when it comes (DynamicSrv.Test.SharedStart).
  # Measured from that instant: the full mesh on every node, the DNS
  # queries until then, global's overlapping-partition and failed-to-connect
  # warnings, nodedowns; then the steady state's DNS queries, the RSS per
  # VM, and (N = 20) the heal: every connection of every node dropped at
  # one instant, DNS unchanged.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.Test.SharedStart

  @interval 1_000
  @steady_ms 5_000
  @heal_sizes [20, 50]
  @drop_alone_ms 5_000
  # Full mesh targets (ms): N <= 20 as before the paced engine; N = 50 and
  # 100 at most half the published package's median on this machine
  # (6,649 and 46,600 ms, shared/REFERENCE.md section 8).
  @targets %{50 => 3_300, 100 => 23_000}

  def run(sizes, runs, libcluster?) do
    Report.emit("""
    == B. Cluster start at one instant (polling_interval #{@interval} ms, #{runs} runs per size) ==

    """)

    code_paths = if libcluster?, do: [libcluster_stand_in()], else: []

    results =
      for n <- sizes, into: %{} do
        {n, for(round <- 1..runs, do: run_once(n, round, n in @heal_sizes, code_paths))}
      end

    Enum.each(code_paths, &File.rm_rf!/1)
    report(sizes, results, libcluster?)
  end

  # The libcluster stand-in of the tests (Cluster.Strategy's connect and
  # disconnect helpers, Cluster.Logger), compiled for the nodes' code path:
  # hex.pm, and so libcluster itself, is not reachable here.
  defp libcluster_stand_in do
    dir = Path.join(System.tmp_dir!(), "bench-libcluster-#{System.os_time()}")
    File.mkdir_p!(dir)
    sources = Path.wildcard("test/fixtures/libcluster/lib/**/*.ex")
    # (return_diagnostics: Elixir 1.20 warns without it; 1.14 ignores it.)
    {:ok, _modules, _diagnostics} =
      Kernel.ParallelCompiler.compile_to_path(sources, dir, return_diagnostics: true)

    dir
  end

  defp run_once(n, round, heal?, code_paths) do
    boot = fn ->
      SharedStart.boot(n, "start#{n}r#{round}.service.consul",
        interval: @interval,
        code_paths: code_paths
      )
    end

    Report.cluster_run("N=#{n} run #{round}", boot, &measure_start(&1, heal?))
  end

  defp measure_start(cluster, heal?) do
    cluster = SharedStart.start_strategies(cluster)
    cpu_before = SharedStart.cpu_seconds(cluster)
    reports = SharedStart.await_mesh(cluster, 60_000)
    cpu = SharedStart.cpu_seconds(cluster) - cpu_before
    setups = setups(cluster)

    start = cluster |> SharedStart.summary(reports) |> Map.merge(%{cpu_s: cpu, setups: setups})
    steady = steady_state(cluster)
    rss = rss_mb(cluster)

    heal =
      if heal? and start.mesh_ms do
        healed = SharedStart.drop_all_connections(cluster)
        heal = SharedStart.summary(healed, SharedStart.await_mesh(healed, 60_000))
        if heal.mesh_ms, do: Map.put(heal, :drop_alone, drop_alone(cluster)), else: heal
      end

    %{start: start, steady: steady, rss: rss, heal: heal}
  end

  # The same drop with every strategy suspended: global's lines and the
  # nodedowns that the drop itself causes, over @drop_alone_ms, with no
  # engine reconnecting. (The strategies stay suspended: the cluster is
  # stopped next.)
  defp drop_alone(cluster) do
    dropped = SharedStart.drop_all_connections(cluster, 1_000, true)
    Process.sleep(1_000 + @drop_alone_ms)

    SharedStart.summary(
      dropped,
      SharedStart.on_all(dropped, "DynamicSrv.Test.ClusterProbe.report()", 10_000)
    )
  end

  # Connection setups the strategies started (not global's own), summed.
  defp setups(cluster) do
    cluster
    |> SharedStart.on_all(":sys.get_state(:shared_start).dialer.started", 10_000)
    |> Enum.filter(&is_integer/1)
    |> Enum.sum()
  end

  # SRV queries per node per polling interval, over @steady_ms after the mesh.
  defp steady_state(cluster) do
    from = System.os_time(:microsecond)
    Process.sleep(@steady_ms)
    queries = SharedStart.queries_between(cluster, from, System.os_time(:microsecond))
    queries / (cluster.n * @steady_ms / @interval)
  end

  defp rss_mb(cluster) do
    cluster.nodes
    |> Enum.map(fn node ->
      case File.read("/proc/#{node.os_pid}/status") do
        {:ok, status} ->
          [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
          String.to_integer(kb) / 1024

        {:error, _} ->
          nil
      end
    end)
    |> Enum.reject(&is_nil/1)
    |> median()
  end

  defp report(sizes, results, libcluster?) do
    rows =
      for n <- sizes do
        ok = results |> Map.fetch!(n) |> Enum.reject(&Map.has_key?(&1, :error))
        starts = Enum.map(ok, & &1.start)
        meshed = Enum.filter(starts, & &1.mesh_ms)
        mesh = median(Enum.map(meshed, & &1.mesh_ms))
        queries = median(Enum.map(meshed, & &1.queries))
        overlap = median(Enum.map(starts, & &1.overlap))
        target = Map.get(@targets, n, 2_000)
        pairs = n * (n - 1) / 2
        clean? = Enum.all?(starts, &(&1.overlap == 0 and &1.failed == 0 and &1.downs == 0))

        [
          "#{n}",
          "#{length(meshed)}/#{length(results[n])}",
          fmt_int(mesh),
          Enum.map_join(starts, "/", &(&1.mesh_ms || "none")),
          "#{target}",
          yes_no(length(meshed) == length(results[n]) and mesh != nil and mesh <= target),
          fmt_int(queries),
          yes_no(queries != nil and queries <= 3 * n),
          Enum.map_join(starts, "/", &"#{&1.overlap}"),
          Enum.map_join(starts, "/", &"#{&1.failed}"),
          Enum.map_join(starts, "/", &"#{&1.downs}"),
          yes_no(overlap == 0 and clean?),
          fmt_float(median(Enum.map(meshed, &(&1.setups / pairs)))),
          fmt_float(median(Enum.map(meshed, & &1.cpu_s))),
          fmt_float(median(Enum.map(meshed, &(&1.cpu_s * 1000 / pairs)))),
          fmt_float(median(Enum.map(ok, & &1.steady))),
          fmt_float(median(Enum.map(ok, & &1.rss)))
        ]
      end

    Report.emit(
      Report.table(
        [
          "N",
          "meshed runs",
          "full mesh ms (median)",
          "per run",
          "target ms",
          "met?",
          "DNS queries until mesh",
          "<= 3N?",
          "overlap lines per run",
          "failed connects per run",
          "nodedowns per run",
          "all 0?",
          "setups per connection",
          "VMs' CPU s until mesh",
          "CPU ms per connection",
          "steady SRV/node/interval",
          "RSS MB per VM"
        ],
        rows
      )
    )

    for n <- @heal_sizes, do: report_heal(n, heals(results, n))

    Report.emit("""

    "full mesh ms": from the shared instant to the moment the last node saw all N-1 peers \
    (each node stamps :nodeup with the machine's wall clock). "DNS queries until mesh": query \
    lines dnsmasq logged in that time (stamped when read, every 5 ms). "overlap lines": \
    global's "... in order to prevent overlapping partitions" warnings, summed over the nodes; \
    "failed connects": global's "failed to connect" warnings; "nodedowns": nodedown \
    messages seen by the nodes (a start is clean when all three are 0 in every run). \
    "setups per connection": connection setups the strategies started (global's own \
    transitive connects not counted) per connection of the mesh, N(N-1)/2. \
    "CPU": user and system time of \
    all node VMs from the instant (about, as the bench samples /proc) to the mesh, and that \
    divided by the N(N-1)/2 connections: the machine does the work of N hosts on its two \
    cores. "steady": SRV queries per node \
    per polling interval over the #{div(@steady_ms, 1000)} s after the mesh (target 1). Each VM: \
    -start_epmd false -epmd_module Elixir.DynamicSrv.Epmd, DYNAMIC_SRV_TIMEOUT_MS=1000, OTP's \
    defaults (prevent_overlapping_partitions and connect_all true), \
    #{if libcluster?, do: "the libcluster stand-in loaded (connects through Cluster.Strategy.connect_nodes/4, lines through Cluster.Logger)", else: "no libcluster"}, \
    Logger level info.

    """)
  end

  defp report_heal(_n, []), do: :ok

  defp report_heal(n, heals) do
    healed = Enum.filter(heals, & &1.mesh_ms)
    mesh = median(Enum.map(healed, & &1.mesh_ms))
    clean? = Enum.all?(heals, &(&1.overlap == 0 and &1.failed == 0))

    Report.emit("""

    Heal, N = #{n}: every node drops every connection at one instant, DNS unchanged; \
    full mesh again after #{fmt_int(mesh)} ms (median; per run \
    #{Enum.map_join(heals, "/", &(&1.mesh_ms || "none"))}; target <= #{2 * @interval} ms, \
    #{yes_no(length(healed) == length(heals) and mesh != nil and mesh <= 2 * @interval)}), \
    overlap lines per run #{Enum.map_join(heals, "/", &"#{&1.overlap}")}, nodedowns \
    #{Enum.map_join(heals, "/", &"#{&1.downs}")}, failed connects \
    #{Enum.map_join(heals, "/", &"#{&1.failed}")} (all 0: #{yes_no(clean?)}); the same drop with \
    the strategies suspended (the drop's own doing, #{@drop_alone_ms} ms): overlap lines \
    #{Enum.map_join(heals, "/", &alone_figure(&1, :overlap))}, nodedowns \
    #{Enum.map_join(heals, "/", &alone_figure(&1, :downs))}, failed connects \
    #{Enum.map_join(heals, "/", &alone_figure(&1, :failed))}.
    """)
  end

  defp alone_figure(%{drop_alone: alone}, key), do: "#{Map.fetch!(alone, key)}"
  defp alone_figure(_heal, _key), do: "-"

  defp heals(results, n),
    do: results |> Map.get(n, []) |> Enum.map(&Map.get(&1, :heal)) |> Enum.reject(&is_nil/1)
end
