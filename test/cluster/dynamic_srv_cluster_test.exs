defmodule Cluster.Strategy.DynamicSrvClusterTest do
  @moduledoc """
  Four real nodes, each on its own ERL_DIST_PORT with no epmd, running the
  strategy with the real :net_kernel connect against a real dnsmasq.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, Wait}

  @svc "svc.service.consul"
  @interval 1_000
  @moduletag :dnsmasq
  @moduletag timeout: 240_000

  defp records(members) do
    Enum.flat_map(members, fn {i, port} ->
      target = "node-#{i}.#{@svc}"
      [{:srv, @svc, target, port}, {:a, target, {127, 0, 0, 1}}]
    end)
  end

  defp strategy_code, do: Node.strategy_code(:dyn_srv, @svc, @interval, :dyn_srv_test)

  defp peers(node), do: node |> Node.eval("Node.list()") |> Enum.sort()

  defp members(node),
    do: node |> Node.eval("DynamicSrv.Membership.members(:dyn_srv_test)") |> Enum.sort()

  defp expected(members, i),
    do: for({j, _} <- members, j != i, do: :"node-#{j}@#{@svc}") |> Enum.sort()

  defp downs(nodes),
    do:
      Enum.map(nodes, fn {_, n} -> Node.eval(n, "DynamicSrv.Test.NodeWatch.counts().nodedown") end)

  defp wait_mesh(nodes, members, timeout) do
    Wait.until(
      fn -> Enum.all?(nodes, fn {i, node} -> peers(node) == expected(members, i) end) end,
      timeout
    )
  end

  # Four nodes listed in a new dnsmasq, each running `setup` and then the
  # strategy; stopped (by OS pid) when the test ends.
  defp start_cluster(setup) do
    members = for i <- 0..3, do: {i, DnsServer.free_port()}
    dns = DnsServer.start(records(members))

    env = [
      {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
      {"DYNAMIC_SRV_TIMEOUT_MS", "500"}
    ]

    nodes =
      for {i, port} <- members do
        {i, Node.start("node-#{i}@#{@svc}", dist_port: port, env: env)}
      end

    on_exit(fn ->
      Enum.each(nodes, fn {_, node} -> Node.stop(node) end)
      DnsServer.stop(dns)
    end)

    for {_, node} <- nodes, do: assert(Node.eval(node, setup <> strategy_code()) == :started)
    {members, dns, nodes}
  end

  test "membership follows DNS, and a DNS outage disconnects nobody" do
    {members, dns, nodes} = start_cluster("DynamicSrv.Test.NodeWatch.start()\n")

    # 1. The full mesh forms through DNS alone.
    assert {:ok, _} = wait_mesh(nodes, members, 4 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # 2. node-3 deregisters (records gone, its strategy stopped, its VM up):
    #    the others disconnect it, once a node has had two answers without
    #    it (about two intervals; the wait is a bound, as below).
    {three, rest} = List.pop_at(nodes, 3)
    rest_members = Enum.take(members, 3)
    dns = DnsServer.set_records(dns, records(rest_members))
    Node.eval(elem(three, 1), "Process.exit(Process.whereis(:dyn_srv_test), :kill)")

    assert {:ok, _} = wait_mesh(rest, rest_members, 10 * @interval),
           inspect(for {_, n} <- rest, do: peers(n))

    # Every strategy drops node-3 itself, not merely the connection (global
    # drops a peer's connection once another peer has disconnected it); a
    # strategy that had not yet seen the change would rightly keep dialling
    # node-3 through the outage below. Each node drops it at its own second
    # answer without it: up to about 2.2 intervals after the change (a poll
    # every interval plus up to 10% jitter), later on a loaded host (a wait
    # of two intervals from here failed in make test-stress run 3 on
    # f149c6b). The wait is a bound, not a timing this test checks.
    assert {:ok, _} =
             Wait.until(
               fn ->
                 Enum.all?(rest, fn {i, n} -> members(n) == expected(rest_members, i) end)
               end,
               10 * @interval
             )

    # 3. DNS down for ten intervals: zero disconnects. The departure above
    #    may still be settling (global can cut a survivors' link while one of
    #    them holds node-3, and the next poll redials it): the count is
    #    taken once the survivors' mesh has held for two intervals.
    assert {:ok, downs_before} =
             Wait.until(
               fn ->
                 before = downs(rest)
                 Process.sleep(2 * @interval)

                 wait_mesh(rest, rest_members, 0) == {:ok, true} and downs(rest) == before and
                   before
               end,
               20 * @interval,
               0
             )

    dns = DnsServer.pause(dns)
    Process.sleep(10 * @interval)

    downs_after = downs(rest)

    assert downs_after == downs_before
    for {i, n} <- rest, do: assert(peers(n) == expected(rest_members, i))

    # 4. DNS back, node-3 listed again and its strategy restarted: followed
    #    again. The survivors' polls backed off while DNS was down (up to
    #    four intervals between polls, at a random point of the second
    #    half), and node-3 dials the nodes whose names sort before its own
    #    only after two intervals: the mesh forms within about four
    #    intervals of DNS coming back, not two (two failed here once, on a
    #    loaded host, 2026-12-07).
    dns = DnsServer.set_records(dns, records(members))

    assert Node.eval(
             elem(three, 1),
             strategy_code()
           ) == :started

    assert {:ok, _} = wait_mesh(nodes, members, 6 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    DnsServer.stop(dns)
  end

  test "a node DNS no longer lists fences itself: connected to nobody, the others keep their links, and it rejoins when listed again" do
    {members, dns, nodes} =
      start_cluster(
        ~s|DynamicSrv.Test.LogTap.start(["fencing", "fence lifted"])\nDynamicSrv.Test.NodeWatch.start()\n|
      )

    assert {:ok, _} = wait_mesh(nodes, members, 5 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # node-3's records go; its VM and its strategy keep running.
    {{3, three}, rest} = List.pop_at(nodes, 3)
    for {_, n} <- rest, do: Node.eval(n, "DynamicSrv.Test.NodeWatch.take_downs()")
    rest_members = Enum.take(members, 3)
    dns = DnsServer.set_records(dns, records(rest_members))
    removed_at = System.monotonic_time(:millisecond)

    # From three polling intervals after the removal on, node-3 is connected
    # to nobody, sampled for five seconds.
    Process.sleep(max(removed_at + 3 * @interval - System.monotonic_time(:millisecond), 0))
    deadline = System.monotonic_time(:millisecond) + 5_000

    samples =
      Stream.repeatedly(fn ->
        Process.sleep(100)
        Node.eval(three, ":erlang.nodes(:connected)")
      end)
      |> Enum.take_while(fn _ -> System.monotonic_time(:millisecond) < deadline end)

    assert length(samples) >= 10
    assert Enum.all?(samples, &(&1 == [])), inspect(Enum.uniq(samples))

    # The survivors keep their mesh, and its links all along: each saw
    # node-3 go down, and no other node (node-3 was asked to leave in one
    # step, so global cut no link between two survivors).
    assert {:ok, _} = wait_mesh(rest, rest_members, 2 * @interval)

    for {_, n} <- rest do
      downs = Node.eval(n, "DynamicSrv.Test.NodeWatch.take_downs()")
      assert [:"node-3@#{@svc}"] == Enum.uniq(for {down, _} <- downs, do: down), inspect(downs)
    end

    # Listed again: node-3 rejoins (the others may dial it before its own
    # next poll lifts the fence).
    dns = DnsServer.set_records(dns, records(members))

    assert {:ok, _} = wait_mesh(nodes, members, 4 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # Logged once when the fence started and once when it ended; the
    # survivors never fenced.
    two_lines = fn ->
      case Node.eval(three, "DynamicSrv.Test.LogTap.lines()") do
        [_, _] = lines -> lines
        _ -> false
      end
    end

    assert {:ok, [start, lifted]} = Wait.until(two_lines, 3 * @interval)

    assert start =~ "fencing node-3@#{@svc}"
    assert lifted =~ "fence lifted"
    for {_, n} <- rest, do: assert(Node.eval(n, "DynamicSrv.Test.LogTap.lines()") == [])

    DnsServer.stop(dns)
  end
end
