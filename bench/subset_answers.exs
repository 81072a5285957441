defmodule Bench.SubsetAnswers do
  @moduledoc false
  # Part D: how a formed cluster holds when DNS answers list only some of
  # its nodes. N real nodes (Cluster.Strategy.DynamicSrv, polling 1 s)
  # behind DynamicSrv.Test.SubsetDns, which answers the service with every
  # record, then with a random half of them, then (N > 8) with 8 at random
  # (Route 53's rule); every node's own name answers correctly. For each
  # answer kind, over @hold_polls polls: nodedowns per minute, the share of
  # samples (every 50 ms on every node) in which the node saw all its
  # peers, and DNS queries per node per poll. Then, with half answers, a
  # node deregistered for real (its own name too): ms until every other
  # node has dropped it.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.Test.{Node, SharedStart, SubsetDns}

  @interval 1_000
  @hold_polls 20

  def run(sizes) do
    Report.emit("""
    == D. Answers that list only some nodes (polling_interval #{@interval} ms, #{@hold_polls} polls per answer kind) ==

    """)

    rows = Enum.flat_map(sizes, &run_size/1)

    Report.emit(
      Report.table(
        [
          "N",
          "answers",
          "nodedowns/min",
          "full mesh % of samples",
          "DNS queries/node/poll",
          "fences",
          "disconnects",
          "departure ms",
          "targets met?"
        ],
        rows
      )
    )

    Report.emit("""

    Targets: 0 nodedowns, 100% of samples in full mesh after formation, a departure \
    acted on within 1 polling interval (#{@interval} ms) by every peer. "departure ms": \
    from the deregistration of one node (SRV and own name gone, the node still running) \
    to the moment the controller saw every other node without it (checked every 100 ms).

    """)
  end

  defp run_size(n) do
    cluster =
      SharedStart.boot(n, "subset#{n}.service.consul", interval: @interval, dns: {:subset, :all})

    try do
      cluster = SharedStart.start_strategies(cluster)
      reports = SharedStart.await_mesh(cluster, 60_000)
      true = SharedStart.summary(cluster, reports).meshed == n
      SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.sample(50)", 5_000)

      modes = [:all, {:sample, div(n, 2)}] ++ if(n > 8, do: [{:sample, 8}], else: [])
      rows = for mode <- modes, do: hold(cluster, n, mode)
      departure = departure(cluster, n)

      List.update_at(rows, 1, &List.replace_at(&1, 7, fmt_int(departure)))
      |> Enum.map(&check(&1, departure))
    after
      SharedStart.stop(cluster)
    end
  end

  defp hold(cluster, n, mode) do
    SubsetDns.set_mode(cluster.dns, mode)
    SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.reset()", 5_000)
    before = SubsetDns.query_count(cluster.dns)
    started = System.monotonic_time(:millisecond)
    Process.sleep(@hold_polls * @interval)
    reports = SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.report()", 5_000)
    elapsed = System.monotonic_time(:millisecond) - started
    queries = SubsetDns.query_count(cluster.dns) - before
    sum = fn key -> reports |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end
    samples = sum.(:samples)

    IO.puts(
      "  N=#{n} #{inspect(mode)}: #{inspect(Enum.map(reports, &Map.take(&1, [:downs, :fences, :disconnects, :samples, :full_samples])), limit: 3)}"
    )

    [
      "#{n}",
      label(mode),
      :erlang.float_to_binary(sum.(:downs) * 60_000 / elapsed, decimals: 1),
      :erlang.float_to_binary(100 * sum.(:full_samples) / max(samples, 1), decimals: 2),
      :erlang.float_to_binary(queries / (n * elapsed / @interval), decimals: 2),
      "#{sum.(:fences)}",
      "#{sum.(:disconnects)}",
      "-",
      nil
    ]
  end

  # Node n is deregistered while it runs; the others must drop it.
  defp departure(cluster, n) do
    SubsetDns.set_mode(cluster.dns, {:sample, div(n, 2)})
    {stay, [gone]} = Enum.split(cluster.nodes, n - 1)

    records =
      stay
      |> Enum.with_index(1)
      |> Enum.flat_map(fn {node, i} -> SharedStart.records(cluster, i, node.dist_port) end)

    started = System.monotonic_time(:millisecond)
    SubsetDns.set_records(cluster.dns, records)
    wait_gone(stay, gone.name, started)
  end

  defp wait_gone(stay, name, started) do
    code = ~s(:"#{name}") <> " in Node.list()"

    cond do
      Enum.all?(stay, &(Node.eval(&1, code) == false)) ->
        System.monotonic_time(:millisecond) - started

      System.monotonic_time(:millisecond) - started > 30_000 ->
        nil

      true ->
        Process.sleep(100)
        wait_gone(stay, name, started)
    end
  end

  defp check([n, answers, downs, full, q, fences, disconnects, dep, nil], departure) do
    met =
      downs == "0.0" and full == "100.00" and fences == "0" and disconnects == "0" and
        (dep == "-" or (departure != nil and departure <= @interval))

    [n, answers, downs, full, q, fences, disconnects, dep, yes_no(met)]
  end

  defp label(:all), do: "all"
  defp label({:sample, k}), do: "#{k} at random"
end
