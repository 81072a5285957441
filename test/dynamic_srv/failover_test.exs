defmodule DynamicSrv.FailoverTest do
  @moduledoc """
  Two DNS servers, the first one silent (a UDP socket that reads queries
  and answers none, as a stopped agent behind a firewall does), the second
  one answering: after the first lookup, lookups go to the one that
  answers, and the silent one gets an occasional probe only. Through the
  strategy's polls and through the epmd module's connection setups (a
  node that is in no port book).
  """
  use ExUnit.Case, async: false

  alias Cluster.Strategy.DynamicSrv, as: Strategy
  alias DynamicSrv.Test.{Node, Recorder, State, SubsetDns, Wait}

  @moduletag timeout: 120_000
  @svc "failover.service.consul"
  # Probes are due 1 s after a failure, then at doubling waits: over the
  # few seconds of a test, a handful at most.
  @probes 4

  setup do
    {:ok, silent} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(silent)
    on_exit(fn -> :gen_udp.close(silent) end)
    %{silent: silent, silent_server: {{127, 0, 0, 1}, port}}
  end

  # The datagrams the silent server has read so far.
  defp received(socket, count \\ 0) do
    case :gen_udp.recv(socket, 0, 0) do
      {:ok, _} -> received(socket, count + 1)
      {:error, :timeout} -> count
    end
  end

  test "the strategy's polls go to the server that answers", ctx do
    live = SubsetDns.start([{:srv, @svc, "node-a.#{@svc}", 4000}])
    on_exit(fn -> SubsetDns.stop(live) end)
    rec = Recorder.start(self())

    config = [
      service: @svc,
      polling_interval: 100,
      timeout: 1_000,
      nameservers: [ctx.silent_server | SubsetDns.nameservers(live)]
    ]

    state = struct(State, [topology: :failover, config: config] ++ Recorder.mfas(rec))
    assert {:ok, pid} = Strategy.start_link([state])
    on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
    assert_receive {:connect, :"node-a@failover.service.consul"}, 10_000

    polls = fn -> live |> SubsetDns.queries() |> Map.get({@svc, :srv, :udp}, 0) end
    assert {:ok, _} = Wait.until(fn -> polls.() >= 20 end, 30_000)
    asked = received(ctx.silent)
    assert asked <= 1 + @probes, "the silent server was asked #{asked} times in #{polls.()} polls"
  end

  test "connection setups through the epmd module ask the server that answers", ctx do
    [port_a, port_b] = for _ <- 1..2, do: DynamicSrv.Test.DnsServer.free_port()

    live =
      SubsetDns.start([
        {:srv, @svc, "node-a.#{@svc}", port_a},
        {:a, "node-a.#{@svc}", {127, 0, 0, 1}},
        {:srv, @svc, "node-b.#{@svc}", port_b},
        {:a, "node-b.#{@svc}", {127, 0, 0, 1}}
      ])

    on_exit(fn -> SubsetDns.stop(live) end)
    {{127, 0, 0, 1}, silent_port} = ctx.silent_server

    env = [
      {"DYNAMIC_SRV_NAMESERVERS", "127.0.0.1:#{silent_port},#{SubsetDns.env_value(live)}"},
      {"DYNAMIC_SRV_TIMEOUT_MS", "1000"}
    ]

    a = Node.start("node-a@#{@svc}", dist_port: port_a, env: env)
    b = Node.start("node-b@#{@svc}", dist_port: port_b, env: env)

    on_exit(fn ->
      Node.stop(a)
      Node.stop(b)
    end)

    # No strategy runs, so no port book holds node-b: the setup asks DNS.
    assert Node.eval(a, ~s|Node.connect(:"node-b@#{@svc}")|) == true

    # Nodes that DNS does not know: each setup asks DNS again.
    before = SubsetDns.query_count(live)

    for i <- 1..6 do
      assert Node.eval(a, ~s|Node.connect(:"ghost-#{i}@#{@svc}")|) == false
    end

    assert SubsetDns.query_count(live) - before >= 6
    asked = received(ctx.silent)
    assert asked <= 2 + @probes, "the silent server was asked #{asked} times in 7 setups"
  end
end
