defmodule Cluster.Strategy.SubsetAnswersTest do
  @moduledoc """
  Real nodes behind a DNS server whose answers list only some of them, as
  Route 53 (8 records at random) and Consul (trimmed UDP answers) give
  them, while every node's own name answers correctly. The cluster must
  form and hold: no nodedown, no fence, no disconnect; a node deregistered
  for real must still be dropped by every peer, and fence itself.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{ClusterProbe, SharedStart, SubsetDns, Wait}

  @moduletag timeout: 300_000
  @n 12
  @interval 500
  # Polls each phase holds the mesh for.
  @polls 40

  test "answers of a random half, then of 8 records: the mesh forms and holds; a deregistered node is dropped and fences itself" do
    svc = "subset.service.consul"

    cluster =
      SharedStart.boot(@n, svc, interval: @interval, dns: {:subset, {:sample, div(@n, 2)}})

    on_exit(fn -> SharedStart.stop(cluster) end)

    cluster = SharedStart.start_strategies(cluster)
    reports = SharedStart.await_mesh(cluster, 60_000)
    assert SharedStart.summary(cluster, reports).meshed == @n

    SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.sample(50)", 5_000)

    # (a) a random half of the records per answer; (b) Route 53's rule.
    for mode <- [{:sample, div(@n, 2)}, {:sample, 8}] do
      SubsetDns.set_mode(cluster.dns, mode)
      SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.reset()", 5_000)
      Process.sleep(@polls * @interval)
      reports = SharedStart.on_all(cluster, "DynamicSrv.Test.ClusterProbe.report()", 5_000)

      for report <- reports do
        assert %{downs: 0, fences: 0, disconnects: 0, overlap: 0, peers: 11} = report,
               "#{inspect(mode)}: #{inspect(report)}"

        assert report.samples > 0 and report.full_samples == report.samples,
               "#{inspect(mode)}: #{inspect(report)}"
      end
    end

    # (c) node 12 is deregistered for real (its own name too) while it runs:
    # every peer drops it, and it fences itself.
    {stay, [gone]} = Enum.split(cluster.nodes, @n - 1)

    records =
      stay
      |> Enum.with_index(1)
      |> Enum.flat_map(fn {node, i} -> SharedStart.records(cluster, i, node.dist_port) end)

    SubsetDns.set_records(cluster.dns, records)
    gone_name = ~s(:"#{gone.name}")

    assert {:ok, _} =
             Wait.until(
               fn ->
                 Enum.all?(
                   stay,
                   &(DynamicSrv.Test.Node.eval(&1, "#{gone_name} in Node.list()") == false)
                 ) and
                   DynamicSrv.Test.Node.eval(gone, "Node.list()") == []
               end,
               10 * @interval,
               50
             )

    # Its peers asked it to leave first; its own next poll fences it.
    assert {:ok, _} =
             Wait.until(
               fn ->
                 DynamicSrv.Test.Node.eval(gone, probe("ClusterProbe.report().fences")) >= 1
               end,
               10 * @interval,
               50
             )

    reports =
      for node <- stay, do: DynamicSrv.Test.Node.eval(node, probe("ClusterProbe.report()"))

    for report <- reports, do: assert(%{fences: 0, peers: 10} = report, inspect(report))

    # The probe sees the strategy's disconnect lines (so the zeros above
    # count): a peer's, when a peer's poll dropped the node first, or the
    # node's own, when its own poll came first and fenced it.
    gone_report = DynamicSrv.Test.Node.eval(gone, probe("ClusterProbe.report()"))
    all = [gone_report | reports]
    assert all |> Enum.map(& &1.disconnects) |> Enum.sum() >= 1, inspect(all)
  end

  defp probe(code), do: "alias #{inspect(ClusterProbe)}; " <> code
end
