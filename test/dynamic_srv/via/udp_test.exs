defmodule DynamicSrv.Via.UdpTest do
  @moduledoc """
  UDP discovery: the packet format, then real nodes on loopback multicast,
  each on its own ERL_DIST_PORT with DynamicSrv.Epmd and no DNS at all.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, RunnerSupport, Wait}
  alias DynamicSrv.Via.Udp.Packet

  @moduletag :dnsmasq
  @moduletag timeout: 180_000
  @secret "correct horse battery staple"
  @group {230, 1, 1, 251}
  @lo {127, 0, 0, 1}

  describe "packets" do
    test "round trip, with and without a MAC" do
      packet = Packet.encode("a@127.0.0.1", 123, 4000, @secret)

      assert {:ok, %{name: "a@127.0.0.1", timestamp: 123, dist_port: 4000, authenticated?: true}} =
               Packet.decode(packet, @secret)

      assert {:ok, %{authenticated?: false}} = Packet.decode(Packet.encode("a@h", 1, 0, nil), nil)
    end

    test "forged, unauthenticated, truncated and malformed packets are refused" do
      packet = Packet.encode("a@127.0.0.1", 123, 4000, @secret)

      assert {:error, :bad_mac} =
               Packet.decode(Packet.encode("a@h", 1, 0, "another secret!!"), @secret)

      assert {:error, :unauthenticated} = Packet.decode(Packet.encode("a@h", 1, 0, nil), @secret)

      assert {:error, :malformed} =
               Packet.decode(binary_part(packet, 0, byte_size(packet) - 1), @secret)

      assert {:error, :malformed} = Packet.decode(packet <> "x", @secret)
      assert {:error, :malformed} = Packet.decode(:erlang.term_to_binary(:a@h), nil)
      assert {:error, :malformed} = Packet.decode("", nil)

      # A flipped bit anywhere is caught by the MAC.
      for i <- 0..(byte_size(packet) - 1) do
        pre = binary_part(packet, 0, i)
        byte = :binary.at(packet, i)
        post = binary_part(packet, i + 1, byte_size(packet) - i - 1)
        flipped = <<pre::binary, Bitwise.bxor(byte, 1), post::binary>>
        assert {:error, _} = Packet.decode(flipped, @secret)
      end
    end

    test "names are checked before anything else sees them" do
      for bad <- ["noat", "a@b@c", "a b@h", "a@h\n", <<0xFF, ?@, ?h>>, "@h", "a@"] do
        assert {:error, :bad_name} = Packet.decode(Packet.encode(bad, 1, 0, nil), nil), bad
      end
    end
  end

  describe "the provider in this VM" do
    setup do
      on_exit(RunnerSupport.env_restorer())
      %{port: DnsServer.free_port()}
    end

    defp start_runner(config) do
      assert {:ok, pid} = RunnerSupport.start([via: DynamicSrv.Via.Udp, serves: true] ++ config)

      on_exit(fn -> RunnerSupport.stop(pid) end)
      pid
    end

    defp udp_socket do
      {:ok, pid} = Wait.until(fn -> Process.whereis(DynamicSrv.Via.Udp) end, 5_000)
      :sys.get_state(pid).socket
    end

    test "Peerage's keys: ip binds the socket, ttl is the multicast TTL", %{port: port} do
      runner = start_runner(port: port, ip: {127, 0, 0, 1}, ttl: 3, multicast_if: "127.0.0.1")
      socket = udp_socket()
      assert :inet.sockname(socket) == {:ok, {@lo, port}}
      assert :inet.getopts(socket, [:multicast_ttl]) == {:ok, [multicast_ttl: 3]}
      RunnerSupport.stop(runner)

      # multicast_ttl, this project's name, wins over ttl; ip defaults to any.
      start_runner(port: port, ttl: 3, multicast_ttl: 2, multicast_if: "127.0.0.1")
      socket = udp_socket()
      assert :inet.sockname(socket) == {:ok, {{0, 0, 0, 0}, port}}
      assert :inet.getopts(socket, [:multicast_ttl]) == {:ok, [multicast_ttl: 2]}
    end

    test "a port held by another program: one message with the fix, started once it is free",
         %{port: port} do
      # Opened without SO_REUSEADDR, the port cannot be shared.
      {:ok, holder} = :gen_udp.open(port, [:binary, ip: {0, 0, 0, 0}])

      log =
        ExUnit.CaptureLog.capture_log(fn ->
          runner = start_runner(port: port, multicast_if: "127.0.0.1")

          assert {:ok, _} =
                   Wait.until(fn -> RunnerSupport.provider_failures(runner) >= 2 end, 5_000)

          :ok = :gen_udp.close(holder)
          assert {:ok, _} = Wait.until(fn -> Process.whereis(DynamicSrv.Via.Udp) end, 6_000)
          assert Process.alive?(runner)
        end)

      assert [_one] = Regex.scan(~r/is held by another program/, log), log
      assert log =~ "UDP port #{port} is held by another program"
      assert log =~ "set port: to a free port"
      assert log =~ ~r/Udp started after \d+ failed attempt\(s\)/
    end

    test "the application starts although its UDP provider cannot (a VM of its own)", %{
      port: port
    } do
      vm = Node.start(nil)
      on_exit(fn -> Node.stop(vm) end)

      code = """
      {:ok, _holder} = :gen_udp.open(#{port}, [])
      Application.put_all_env(libcluster_dynamic_srv:
        [via: DynamicSrv.Via.Udp, serves: true, port: #{port}])
      {:ok, _} = Application.ensure_all_started(:libcluster_dynamic_srv)
      started = Enum.any?(Application.started_applications(), &(elem(&1, 0) == :libcluster_dynamic_srv))
      {started, is_pid(Process.whereis(DynamicSrv.Runner))}
      """

      assert Node.eval(vm, code) == {true, true}
    end
  end

  describe "real nodes" do
    setup do
      %{port: DnsServer.free_port()}
    end

    defp start_node(name, udp_port, secret) do
      node = Node.start(name, dist_port: DnsServer.free_port())

      code = """
      {:ok, pid} = DynamicSrv.Runner.start_link(
        via: DynamicSrv.Via.Udp, serves: true, interval: 1, port: #{udp_port},
        multicast_if: "127.0.0.1", announce_interval: 200, forget_after: 1_500,
        secret: #{inspect(secret)})
      Process.unlink(pid)
      :started
      """

      assert Node.eval(node, code) == :started
      node
    end

    defp peers(node), do: node |> Node.eval("Node.list()") |> Enum.sort()
    defp heard(node), do: node |> Node.eval("DynamicSrv.Via.Udp.poll(%{})")

    defp atom?(node, name),
      do:
        Node.eval(
          node,
          ~s|try do String.to_existing_atom(#{inspect(name)}) && true rescue ArgumentError -> false end|
        )

    test "three nodes find each other; a wrong secret, forged, stale and replayed packets are ignored",
         %{port: port} do
      names = for i <- 0..2, do: "u#{i}@127.0.0.1"
      nodes = for name <- names, do: start_node(name, port, @secret)
      intruder = start_node("intruder@127.0.0.1", port, "a different secret")
      on_exit(fn -> Enum.each([intruder | nodes], &Node.stop/1) end)

      expected = fn name ->
        names |> List.delete(name) |> Enum.map(&String.to_atom/1) |> Enum.sort()
      end

      assert {:ok, _} =
               Wait.until(
                 fn ->
                   Enum.all?(Enum.zip(names, nodes), fn {n, node} ->
                     peers(node) == expected.(n)
                   end)
                 end,
                 10_000
               ),
             inspect(Enum.map(nodes, &peers/1))

      # The intruder hears everyone but can verify no one, and no one admits it.
      assert peers(intruder) == []
      for node <- nodes, do: refute(atom?(node, "intruder@127.0.0.1"))

      # Forged (wrong key), unauthenticated, stale and malformed packets.
      {:ok, socket} =
        :gen_udp.open(port, [
          :binary,
          active: true,
          reuseaddr: true,
          multicast_if: @lo,
          multicast_loop: true,
          add_membership: {@group, @lo}
        ])

      tag = System.unique_integer([:positive])
      now = System.os_time(:millisecond)

      for packet <- [
            Packet.encode("forged-#{tag}@127.0.0.1", now, 4000, "not the secret at all"),
            Packet.encode("plain-#{tag}@127.0.0.1", now, 4000, nil),
            Packet.encode("stale-#{tag}@127.0.0.1", now - 60_000, 4000, @secret),
            "DSRV" <> :crypto.strong_rand_bytes(40)
          ] do
        :ok = :gen_udp.send(socket, @group, port, packet)
      end

      # Capture a genuine announcement of u2, stop u2, and replay it once u2
      # has been forgotten.
      captured = capture(socket, "u2@127.0.0.1")
      Node.stop(Enum.at(nodes, 2))

      assert {:ok, _} = Wait.until(fn -> heard(hd(nodes)) == {:ok, [:"u1@127.0.0.1"]} end, 5_000)

      for _ <- 1..3, do: :ok = :gen_udp.send(socket, @group, port, captured)
      Process.sleep(600)
      assert heard(hd(nodes)) == {:ok, [:"u1@127.0.0.1"]}
      :gen_udp.close(socket)

      for node <- Enum.take(nodes, 2), name <- ~w(forged plain stale) do
        refute atom?(node, "#{name}-#{tag}@127.0.0.1"), "#{name} packet created an atom"
      end
    end
  end

  defp capture(socket, name) do
    receive do
      {:udp, ^socket, _ip, _port, data} ->
        case Packet.decode(data, @secret) do
          {:ok, %{name: ^name}} -> data
          _ -> capture(socket, name)
        end
    after
      5_000 -> flunk("no announcement of #{name} heard")
    end
  end
end
