defmodule DynamicSrv.MultihostTest do
  @moduledoc """
  Three hosts, each a network namespace with its own address, all running
  distribution on the same ERL_DIST_PORT with DynamicSrv.Epmd, and a DNS
  host (dnsmasq on the bridge): the strategy forms the cluster, drops a host
  whose link goes down once DNS stops listing it, and takes it back when
  its link and records return.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Netns, Node, Wait}

  @svc "svc.service.consul"
  @dist_port 9100
  @interval 1_000
  @moduletag :dnsmasq
  @moduletag :netns
  @moduletag timeout: 240_000

  defp records(hosts) do
    Enum.flat_map(hosts, fn {i, host} ->
      target = "host-#{i}.#{@svc}"
      [{:srv, @svc, target, @dist_port}, {:a, target, host.address}]
    end)
  end

  defp strategy_code, do: Node.strategy_code(:multihost, @svc, @interval, :multihost_strategy)

  defp peers(node), do: node |> Node.eval("Node.list()") |> Enum.sort()
  defp name(i), do: :"host-#{i}@#{@svc}"

  defp wait_peers(nodes, expected, timeout) do
    Wait.until(
      fn -> Enum.all?(nodes, fn {i, node} -> peers(node) == expected.(i) end) end,
      timeout
    )
  end

  test "hosts in namespaces cluster, drop a host cut off from the network, and take it back" do
    net = Netns.setup(3)
    hosts = Enum.with_index(net.hosts, 1) |> Enum.map(fn {h, i} -> {i, h} end)
    dns = DnsServer.start(records(hosts), listen: net.gateway)

    env = [
      {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
      {"DYNAMIC_SRV_TIMEOUT_MS", "500"}
    ]

    nodes =
      for {i, host} <- hosts do
        {i, Node.start("host-#{i}@#{@svc}", dist_port: @dist_port, env: env, netns: host.ns)}
      end

    on_exit(fn ->
      Enum.each(nodes, fn {_, node} -> Node.stop(node) end)
      DnsServer.stop(dns)
      Netns.teardown(net)
    end)

    # Each host has its own address and nothing but its veth.
    [{1, one} | _] = nodes
    {:ok, addrs} = Node.eval(one, ":inet.getifaddrs()")
    assert Enum.any?(addrs, fn {_, opts} -> {:addr, {10, 77, net.tag, 1}} in opts end)

    for {_, node} <- nodes, do: assert(Node.eval(node, strategy_code()) == :started)

    all = fn i -> for(j <- 1..3, j != i, do: name(j)) |> Enum.sort() end

    assert {:ok, _} = wait_peers(nodes, all, 4 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))

    # Host 3's link goes down and DNS stops listing it: the others drop it.
    {3, host3} = List.last(hosts)
    Netns.cut(host3)
    dns = DnsServer.set_records(dns, records(Enum.take(hosts, 2)))
    rest = Enum.take(nodes, 2)
    two = fn i -> for(j <- 1..2, j != i, do: name(j)) |> Enum.sort() end

    assert {:ok, _} = wait_peers(rest, two, 4 * @interval),
           inspect(for {_, n} <- rest, do: peers(n))

    # Link and records back: host 3 rejoins.
    Netns.restore(host3)
    _dns = DnsServer.set_records(dns, records(hosts))

    assert {:ok, _} = wait_peers(nodes, all, 10 * @interval),
           inspect(for {_, n} <- nodes, do: peers(n))
  end
end
