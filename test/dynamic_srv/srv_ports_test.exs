defmodule DynamicSrv.SrvPortsTest do
  @moduledoc """
  Two SRV records for one target with different ports, as a node restarted
  on a new port leaves them while its old registration lingers: the port
  book keeps both, and connecting reaches the port that answers. Real BEAM
  nodes and a real dnsmasq, which rotates its answers.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node}

  @svc "svc.service.consul"
  @moduletag :dnsmasq
  @moduletag timeout: 120_000

  setup_all do
    [port0, port1, dead] = for _ <- 1..3, do: DnsServer.free_port()
    target0 = "node-0.#{@svc}"
    target1 = "node-1.#{@svc}"

    # node-1 is listed on a port nothing listens on and on its real one, in
    # the service's answer and in a per-node answer (Consul tag style).
    records = [
      {:srv, @svc, target0, port0},
      {:srv, @svc, target1, dead},
      {:srv, @svc, target1, port1},
      {:srv, target1, target1, dead},
      {:srv, target1, target1, port1},
      {:a, target0, {127, 0, 0, 1}},
      {:a, target1, {127, 0, 0, 1}}
    ]

    dns = DnsServer.start(records)
    env = DnsServer.node_env(dns)
    n1 = Node.start("node-1@#{@svc}", dist_port: port1, env: env)
    n0 = Node.start("node-0@#{@svc}", dist_port: port0, env: env)

    on_exit(fn ->
      Enum.each([n0, n1], &Node.stop/1)
      DnsServer.stop(dns)
    end)

    %{n0: n0, port1: port1, dead: dead}
  end

  # Up to `attempts` connection attempts from the node, one second apart
  # (the epmd module keeps each answer for one second); the number of the
  # first that succeeded, or nil.
  defp connect_code(attempts) do
    """
    Enum.find(1..#{attempts}, fn _ ->
      Node.connect(:"node-1@#{@svc}") == true or (Process.sleep(1_100); false)
    end)
    """
  end

  defp reset_code do
    """
    Node.disconnect(:"node-1@#{@svc}")
    :ets.delete_all_objects(DynamicSrv.PortBook)
    :ets.delete_all_objects(DynamicSrv.Hints)
    Node.list()
    """
  end

  test "a poll that lists a node on a dead port and its real one: the node is reached",
       %{n0: n0, port1: port1, dead: dead} do
    assert Node.eval(n0, reset_code()) == []

    # The poll's answer in the order that once left only the dead port booked.
    assert Node.eval(n0, """
           DynamicSrv.SrvPoll.poll(%DynamicSrv.SrvPoll{service: "#{@svc}", book_ttl: 60_000, resolver: fn _ ->
             [{0, 1, #{port1}, ~c"node-1.#{@svc}"}, {0, 1, #{dead}, ~c"node-1.#{@svc}"}]
           end})
           """) == {:ok, [:"node-1@#{@svc}"]}

    assert Node.eval(n0, connect_code(3)) in 1..3
    assert Node.eval(n0, "Node.list()") == [:"node-1@#{@svc}"]

    # Both ports are booked.
    assert {:ok, _, ports} =
             Node.eval(n0, ~s|DynamicSrv.PortBook.fetch_ports("node-1@#{@svc}", :inet)|)

    assert Enum.sort(ports) == Enum.sort([port1, dead])
  end

  test "DNS alone lists a node on a dead port and its real one: every connection reaches it",
       %{n0: n0} do
    # Four connections, each resolved afresh from the rotating answer, each
    # at its first attempt: the port that accepts a connection is chosen.
    for round <- 1..4 do
      assert Node.eval(n0, reset_code()) == []
      assert Node.eval(n0, connect_code(1)) == 1, "round #{round}"
    end
  end
end
