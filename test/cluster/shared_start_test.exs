defmodule Cluster.Strategy.SharedStartTest do
  @moduledoc """
  More nodes than the DNS server serves TCP connections at once (dnsmasq:
  20), all starting their strategy at one instant, as after a parallel
  rollout: the service's SRV answer is too big for UDP, so every poll
  needs TCP. The cluster must form a full mesh without `global` cutting a
  single connection. `make test` starts 24 nodes; `make test-stress`
  (`DYNAMIC_SRV_STRESS=1`) also 50, on a host its CPU hogs keep busy
  (100 nodes are measured by `make bench-scale`, see guides/benchmarks.md).
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.SharedStart

  @moduletag timeout: 300_000

  for {n, tags} <- [{24, []}, {50, [stress: true]}] do
    @tag tags
    test "#{n} nodes started at one instant form a full mesh with no overlapping-partition disconnect" do
      n = unquote(n)
      cluster = SharedStart.boot(n, "together#{n}.service.consul")
      on_exit(fn -> SharedStart.stop(cluster) end)

      cluster = SharedStart.start_strategies(cluster)
      # A bound for the wait, not a performance target (make bench has those).
      reports = SharedStart.await_mesh(cluster, 120_000)
      summary = SharedStart.summary(cluster, reports)

      assert summary.meshed == n, inspect(summary)
      assert summary.overlap == 0, inspect(summary)
      assert summary.failed == 0, inspect(summary)
      assert summary.downs == 0, inspect(summary)
    end
  end
end
