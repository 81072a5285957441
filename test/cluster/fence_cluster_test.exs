defmodule Cluster.Strategy.DynamicSrvFenceTest do
  @moduledoc """
  A node removed from DNS while its VM and its strategy keep running fences
  itself: four real nodes (each on its own ERL_DIST_PORT, no epmd) run the
  strategy with the real `:net_kernel` connect against a real dnsmasq.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, Wait}

  @svc "svc.service.consul"
  @interval 1_000
  @moduletag timeout: 240_000

  defp records(members) do
    Enum.flat_map(members, fn {i, port} ->
      target = "node-#{i}.#{@svc}"
      [{:srv, @svc, target, port}, {:a, target, {127, 0, 0, 1}}]
    end)
  end

  defp peers(node), do: node |> Node.eval(":erlang.nodes(:connected)") |> Enum.sort()

  defp expected(members, i),
    do: for({j, _} <- members, j != i, do: :"node-#{j}@#{@svc}") |> Enum.sort()

  defp wait_mesh(nodes, members, timeout) do
    Wait.until(
      fn -> Enum.all?(nodes, fn {i, node} -> peers(node) == expected(members, i) end) end,
      timeout
    )
  end

  test "a node DNS no longer lists is connected to nobody, and rejoins when listed again" do
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

    code = Node.strategy_code(:dyn_srv, @svc, @interval, :dyn_srv_test)
    tap = ~s|DynamicSrv.Test.LogTap.start(["fencing", "fence lifted"])\n|
    for {_, node} <- nodes, do: assert(Node.eval(node, tap <> code) == :started)

    assert {:ok, _} = wait_mesh(nodes, members, 5 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # node-3's records go; its VM and its strategy keep running.
    {{3, three}, rest} = List.pop_at(nodes, 3)
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
        peers(three)
      end)
      |> Enum.take_while(fn _ -> System.monotonic_time(:millisecond) < deadline end)

    assert length(samples) >= 10
    assert Enum.all?(samples, &(&1 == [])), inspect(Enum.uniq(samples))

    # The survivors keep their mesh.
    assert {:ok, _} = wait_mesh(rest, rest_members, 2 * @interval)

    # Listed again: node-3 rejoins through its own strategy.
    dns = DnsServer.set_records(dns, records(members))

    assert {:ok, _} = wait_mesh(nodes, members, 4 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # Logged once when the fence started and once when it ended; the
    # survivors never fenced.
    assert [start, lifted] = Node.eval(three, "DynamicSrv.Test.LogTap.lines()")
    assert start =~ "fencing node-3@#{@svc}"
    assert lifted =~ "fence lifted"
    for {_, n} <- rest, do: assert(Node.eval(n, "DynamicSrv.Test.LogTap.lines()") == [])

    DnsServer.stop(dns)
  end
end
