defmodule DynamicSrv.EpmdClusterTest do
  @moduledoc """
  Real BEAM nodes, each on its own ERL_DIST_PORT, with no epmd daemon,
  finding each other through DNS only.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, NoEpmd}

  @svc "svc.service.consul"
  @moduletag :dnsmasq
  @moduletag timeout: 180_000

  setup_all do
    ports = for _ <- 0..2, do: DnsServer.free_port()

    # node-0 and node-1 also have a per-node SRV record (Consul tag style);
    # node-2 is only in the service's answer.
    records =
      Enum.flat_map(Enum.with_index(ports), fn {port, i} ->
        target = "node-#{i}.#{@svc}"
        tag = if i < 2, do: [{:srv, target, target, port}], else: []
        [{:srv, @svc, target, port}, {:a, target, {127, 0, 0, 1}}] ++ tag
      end) ++ [{:srv, @svc, "decoy.other.consul", 1}]

    dns = DnsServer.start(records, log_queries: true)

    env = DnsServer.node_env(dns)

    nodes =
      for {port, i} <- Enum.with_index(ports) do
        Node.start("node-#{i}@#{@svc}", dist_port: port, env: env)
      end

    on_exit(fn ->
      Enum.each(nodes, &Node.stop/1)
      DnsServer.stop(dns)
    end)

    %{dns: dns, env: env, nodes: nodes, ports: ports}
  end

  test "three nodes form a full mesh through DNS with no epmd running", %{
    nodes: nodes,
    ports: ports
  } do
    [n0, n1, _n2] = nodes

    assert Node.eval(n0, ~s|Node.connect(:"node-1@#{@svc}")|) == true
    assert Node.eval(n0, ~s|Node.connect(:"node-2@#{@svc}")|) == true
    assert Node.eval(n1, ~s|Node.connect(:"node-2@#{@svc}")|) == true

    for {node, i} <- Enum.with_index(nodes) do
      expected = for j <- 0..2, j != i, do: :"node-#{j}@#{@svc}"
      assert Enum.sort(Node.eval(node, "Node.list()")) == expected
    end

    # Each node listens on its own ERL_DIST_PORT.
    for port <- ports do
      assert {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, port, [], 1_000)
      :gen_tcp.close(socket)
    end

    # No epmd daemon: each node was told to start none and uses the epmd
    # module, and nothing this test started is an epmd or has a socket on
    # 4369 (an epmd that runs on the machine for other reasons is allowed).
    for node <- nodes do
      assert Node.eval(node, ":init.get_argument(:start_epmd)") == {:ok, [[~c"false"]]}
      assert Node.eval(node, ":net_kernel.epmd_module()") == DynamicSrv.Epmd
    end

    assert NoEpmd.assert_none(NoEpmd.node_marker()) >= length(nodes)
  end

  test "the port comes from the record whose target is the node, not the first record", %{
    nodes: [n0 | _],
    ports: ports
  } do
    # node-2 has no per-node SRV record: its port is found in the service's answer.
    assert {:ok, {127, 0, 0, 1}, port, 5} =
             Node.eval(n0, ~s|DynamicSrv.Epmd.address_please(~c"node-2", ~c"#{@svc}", :inet)|)

    assert port == Enum.at(ports, 2)
  end

  test "an unknown node gives false, costs one round of DNS, and the caller stays up", %{
    dns: dns,
    nodes: [n0 | _]
  } do
    before = DnsServer.query_count(dns)
    assert Node.eval(n0, ~s|Node.connect(:"ghost@#{@svc}")|) == false
    queries = DnsServer.query_count(dns) - before
    # SRV and A of ghost.svc.service.consul, then the service's SRV answer:
    # once, although OTP asks for the address twice per attempt.
    assert queries in 1..3, "#{queries} queries for one connection attempt"
    assert Node.eval(n0, "1 + 1") == 2
  end

  test "when DNS does not answer, the last address known here is used, else a connected peer's; never without either",
       %{nodes: nodes, ports: ports} do
    {:ok, silent} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, silent_port} = :inet.port(silent)
    port_9 = DnsServer.free_port()

    # node-9's DNS is silent; the others know where node-9 listens, as
    # their polls would have it. (Were it unknown to them, `global` would
    # rightly cut node-9 off: node-1 tells node-0 and node-2 to connect to
    # it, and each connect that fails disconnects node-9 from all.)
    for peer <- nodes, do: book(peer, 9, port_9, 60_000)

    node =
      Node.start("node-9@#{@svc}",
        dist_port: port_9,
        env: [
          {"DYNAMIC_SRV_NAMESERVERS", "127.0.0.1:#{silent_port}"},
          {"DYNAMIC_SRV_TIMEOUT_MS", "300"}
        ]
      )

    try do
      # An entry for node-1 that has already expired, as a poll long ago left it.
      book(node, 1, Enum.at(ports, 1), 0)

      assert Node.eval(node, ~s|DynamicSrv.PortBook.fetch_ports("node-1@#{@svc}", :inet)|) ==
               :miss

      # node-1 knows where node-0 and node-2 listen, as its polls would
      # have it (a node it only accepted connections from is not in its
      # book).
      for i <- [0, 2], do: book(Enum.at(nodes, 1), i, Enum.at(ports, i), 60_000)

      assert Node.eval(node, ~s|DynamicSrv.PortBook.fetch_stale("node-2@#{@svc}", :inet)|) ==
               :miss

      # A node the silent DNS never answered for and nobody knows: false.
      assert Node.eval(node, ~s|Node.connect(:"node-7@#{@svc}")|) == false
      assert Node.eval(node, ~s|Node.connect(:"node-1@#{@svc}")|) == true

      # node-2: never known here, known to node-1, which node-9 is now
      # connected to. `global` may connect the two first, from either side,
      # so the lookup itself is checked: only a peer can have answered it.
      assert {:ok, {127, 0, 0, 1}, port_2, 5} =
               Node.eval(
                 node,
                 ~s|DynamicSrv.Epmd.address_please(~c"node-2", ~c"#{@svc}", :inet)|
               )

      assert port_2 == Enum.at(ports, 2)
      assert Node.eval(node, ~s|Node.connect(:"node-2@#{@svc}")|) == true
      assert :"node-2@#{@svc}" in Node.eval(node, "Node.list()")
    after
      Node.stop(node)
      :gen_udp.close(silent)
    end
  end

  # Books node-`i` at `port` in `on`'s port book for `ttl_ms`.
  defp book(on, i, port, ttl_ms),
    do:
      Node.eval(
        on,
        ~s|DynamicSrv.PortBook.put("node-#{i}@#{@svc}", :inet, {:ok, {127, 0, 0, 1}, #{port}}, #{ttl_ms})|
      )

  test "a rem- helper of node-0 reaches node-0 through the local path, without DNS", %{
    ports: ports
  } do
    {:ok, silent} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, silent_port} = :inet.port(silent)

    helper =
      Node.start("rem-1a2b-node-0@#{@svc}",
        dist_port: Enum.at(ports, 0),
        hidden: true,
        env: [
          {"DYNAMIC_SRV_NAMESERVERS", "127.0.0.1:#{silent_port}"},
          {"DYNAMIC_SRV_TIMEOUT_MS", "300"}
        ]
      )

    try do
      assert Node.eval(helper, ~s|Node.connect(:"node-0@#{@svc}")|) == true
      assert Node.eval(helper, "Node.list(:hidden)") == [:"node-0@#{@svc}"]
      # Its own listener is on an ephemeral port, not node-0's.
      assert Node.eval(
               helper,
               "DynamicSrv.Epmd.listen_port_please(~c\"rem-1a2b-node-0\", ~c\"x\")"
             ) == {:ok, 0}
    after
      Node.stop(helper)
      :gen_udp.close(silent)
    end
  end

  test "a missing or invalid ERL_DIST_PORT stops the VM with one clear message", %{env: env} do
    for {value, expected} <- [
          {nil, "ERL_DIST_PORT is not set"},
          {"abc", ~s(ERL_DIST_PORT="abc" is not a port number)},
          {"70000", ~s(ERL_DIST_PORT="70000" is not a port number)}
        ] do
      node = Node.start("node-9@#{@svc}", dist_port: value, env: env, wait: false)
      {status, output} = Node.await_exit(node)
      Node.stop(node)
      assert status == 1, output
      assert output =~ expected
      assert [_] = output |> String.split("\n") |> Enum.filter(&(&1 =~ "ERL_DIST_PORT"))
    end
  end

  test "a bad DYNAMIC_SRV_NAMESERVERS or DYNAMIC_SRV_TIMEOUT_MS stops the VM at boot", %{
    ports: ports
  } do
    for {env, expected} <- [
          {[{"DYNAMIC_SRV_NAMESERVERS", "127.0.0.1:0"}],
           ~s(DYNAMIC_SRV_NAMESERVERS="127.0.0.1:0")},
          {[{"DYNAMIC_SRV_TIMEOUT_MS", "soon"}], ~s(DYNAMIC_SRV_TIMEOUT_MS="soon")}
        ] do
      node =
        Node.start("node-8@#{@svc}", dist_port: Enum.at(ports, 0) + 1000, env: env, wait: false)

      {status, output} = Node.await_exit(node)
      Node.stop(node)
      assert status == 1, output
      assert output =~ expected
    end
  end
end
