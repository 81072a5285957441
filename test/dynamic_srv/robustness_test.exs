defmodule DynamicSrv.RobustnessTest do
  @moduledoc """
  Real nodes clustered through dnsmasq by the strategy: what anyone on a
  node can send to the package's processes does not take the distribution
  down, and a runtime `Node.start/2` with a bad environment is an error, not
  the end of the VM.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, Wait}

  @svc "svc.service.consul"
  @moduletag :dnsmasq
  @moduletag timeout: 180_000

  # Evaluated on a node: sends `pid` every kind of stray message, unknown
  # request and `:sys` request, each bounded by a short timeout (a refused
  # or ignored request makes the caller, not the target, give up).
  @attack """
  attack = fn pid, kinds ->
    quietly = fn fun -> try do fun.() catch _, _ -> :ignored end end
    t = 300
    send(pid, :hello)
    send(pid, {:unexpected, make_ref(), self()})

    if :requests in kinds do
      GenServer.cast(pid, :hello)
      quietly.(fn -> GenServer.call(pid, :hello, t) end)
    end

    if :linked_exit in kinds do
      {_, ref} = spawn_monitor(fn -> Process.link(pid); exit(:boom) end)
      receive do {:DOWN, ^ref, _, _, _} -> :ok end
    end

    quietly.(fn -> :sys.get_state(pid, t) end)
    quietly.(fn -> :sys.get_status(pid, t) end)
    quietly.(fn -> :sys.replace_state(pid, fn _ -> raise "boom" end, t) end)
    quietly.(fn -> :sys.install(pid, {fn _, _, _ -> raise "boom" end, nil}, t) end)
    quietly.(fn -> :sys.statistics(pid, true, t) end)
    quietly.(fn -> :sys.log(pid, true, t) end)
    quietly.(fn -> :sys.suspend(pid, t) end)
    quietly.(fn -> :sys.change_code(pid, :no_such_module, :old, nil, t) end)
    quietly.(fn -> :sys.resume(pid, t) end)
    quietly.(fn -> :sys.no_debug(pid, t) end)

    if :exit_signals in kinds do
      Process.exit(pid, :boom)
      Process.exit(pid, :shutdown)
    end

    if :malformed in kinds do
      send(pid, {:system, :not_a_from, :get_state})
      send(pid, {:"$gen_call", :not_a_from, :hello})
      quietly.(fn -> :sys.terminate(pid, :boom, t) end)
    end

    :ok
  end
  """

  setup_all do
    ports = for _ <- 0..1, do: DnsServer.free_port()

    records =
      Enum.flat_map(Enum.with_index(ports), fn {port, i} ->
        target = "node-#{i}.#{@svc}"
        [{:srv, @svc, target, port}, {:a, target, {127, 0, 0, 1}}]
      end)

    dns = DnsServer.start(records, log_queries: true)

    env = DnsServer.node_env(dns)

    nodes =
      for {port, i} <- Enum.with_index(ports) do
        node = Node.start("node-#{i}@#{@svc}", dist_port: port, env: env)
        code = Node.strategy_code(:robust, @svc, 300, :robust_strategy)
        assert Node.eval(node, code) == :started
        node
      end

    on_exit(fn ->
      Enum.each(nodes, &Node.stop/1)
      DnsServer.stop(dns)
    end)

    [n0, n1] = nodes

    assert {:ok, _} =
             Wait.until(
               fn ->
                 Node.eval(n0, "Node.list()") == [:"node-1@#{@svc}"] and
                   Node.eval(n1, "Node.list()") == [:"node-0@#{@svc}"]
               end,
               30_000
             )

    %{dns: dns, env: env, nodes: nodes, ports: ports}
  end

  test "stray messages, unknown requests, linked exits and :sys requests knock nothing over", %{
    dns: dns,
    nodes: [n0, n1],
    ports: ports
  } do
    udp_port = DnsServer.free_port()

    assert Node.eval(n0, """
           # Its parent is a process that ends at once, not this one (which
           # sends the exit signals below).
           caller = self()
           spawn(fn ->
             {:ok, pid} = DynamicSrv.Runner.start_link(
               via: DynamicSrv.Via.Udp, serves: true, interval: 1, port: #{udp_port},
               multicast_if: "127.0.0.1", announce_interval: 200)
             Process.unlink(pid)
             send(caller, :runner_started)
           end)
           receive do :runner_started -> :started end
           """) == :started

    # Every process gets every kind; the port book, which distribution
    # depends on, also malformed system messages and `:sys.terminate/3`
    # (the others stop on it, as any GenServer asked to stop does).
    all = [:requests, :linked_exit, :exit_signals]

    plan = %{
      DynamicSrv.PortBook => [:malformed | all],
      DynamicSrv.Via.Udp => all,
      DynamicSrv.Runner => all,
      DynamicSrv.Runner.Membership => all,
      :robust_strategy => all
    }

    registered = """
    Process.registered()
    |> Enum.filter(&(String.starts_with?(Atom.to_string(&1), "Elixir.DynamicSrv") or &1 == :robust_strategy))
    |> Enum.sort()
    |> Enum.map(&{&1, Process.whereis(&1)})
    """

    before = Node.eval(n0, registered)
    # Every registered process of the package gets the treatment.
    assert Enum.sort(Keyword.keys(before)) == Enum.sort(Map.keys(plan))
    queries_before = DnsServer.query_count(dns)

    assert Node.eval(
             n0,
             @attack <>
               "for {name, kinds} <- #{inspect(plan)}, do: attack.(Process.whereis(name), kinds)\n:done",
             60_000
           ) == :done

    # The node is still distributed under its name, with the same net_kernel,
    # and connected both ways.
    assert Node.eval(n0, "node()") == :"node-0@#{@svc}"
    assert Node.eval(n0, "Node.list()") == [:"node-1@#{@svc}"]
    assert Node.eval(n1, "Node.list()") == [:"node-0@#{@svc}"]

    # The same processes, all of them still working.
    assert Node.eval(n0, registered) == before
    assert Node.eval(n0, ~s|DynamicSrv.PortBook.enabled?()|)

    # The strategy's polls keep booking node-1's port.
    fetch = ~s|DynamicSrv.PortBook.fetch_ports("node-1@#{@svc}", :inet)|
    port1 = Enum.at(ports, 1)

    assert {:ok, {:ok, _, [^port1]}} =
             Wait.until(
               fn -> match?({:ok, _, _}, Node.eval(n0, fetch)) && Node.eval(n0, fetch) end,
               10_000
             )

    assert :"node-1@#{@svc}" in Node.eval(n0, "DynamicSrv.Membership.members(:robust_strategy)")
    assert {:ok, peers} = Node.eval(n0, "DynamicSrv.Via.Udp.poll(%{})")
    assert is_list(peers)
    assert is_list(Node.eval(n0, "DynamicSrv.Membership.members(DynamicSrv.Runner.Membership)"))

    assert Node.eval(n0, "GenServer.call(DynamicSrv.PortBook, :hello)") ==
             {:error, :not_supported}

    assert Node.eval(n0, "GenServer.call(:robust_strategy, :hello)") == {:error, :unknown_call}
    assert Node.eval(n0, "GenServer.call(DynamicSrv.Via.Udp, :hello)") == {:error, :unknown_call}
    assert Node.eval(n0, "GenServer.call(DynamicSrv.Runner, :hello)") == {:error, :unknown_call}

    # The strategy still polls DNS (it was suspended and resumed).
    assert {:ok, _} =
             Wait.until(fn -> DnsServer.query_count(dns) > queries_before + 2 end, 10_000)

    # A connection set up after it all goes through the epmd module again.
    assert Node.eval(n0, ~s|Node.disconnect(:"node-1@#{@svc}")|) == true
    assert Node.eval(n0, ~s|Node.connect(:"node-1@#{@svc}")|) == true
  end

  test "a port book whose owner is killed or whose table is deleted comes back on the next write",
       %{nodes: [n0, _]} do
    for breakage <- [
          "Process.exit(Process.whereis(DynamicSrv.PortBook), :kill)",
          ":ets.delete(DynamicSrv.PortBook)"
        ] do
      assert Node.eval(n0, """
             pid = Process.whereis(DynamicSrv.PortBook)
             ref = Process.monitor(pid)
             #{breakage}
             # Wait until the table is gone.
             gone = fn gone -> if :ets.whereis(DynamicSrv.PortBook) == :undefined, do: :ok, else: gone.(gone) end
             gone.(gone)
             DynamicSrv.PortBook.put("ghost@#{@svc}", :inet, {:ok, {127, 0, 0, 9}, 9}, 60_000)
             {DynamicSrv.PortBook.fetch_ports("ghost@#{@svc}", :inet), :ets.info(DynamicSrv.PortBook, :owner) != pid}
             """) == {{:ok, {127, 0, 0, 9}, [9]}, true}
    end

    # The hints' table too.
    assert Node.eval(n0, """
           :ets.delete(DynamicSrv.Hints)
           DynamicSrv.Hints.put_port_choice("ghost@test", :inet, {{127, 0, 0, 9}, 9}, 60_000)
           DynamicSrv.Hints.port_choice("ghost@test", :inet) == {{127, 0, 0, 9}, 9}
           """)

    # The node stayed distributed and connected throughout.
    assert Node.eval(n0, "node()") == :"node-0@#{@svc}"
    assert Node.eval(n0, "Node.list()") == [:"node-1@#{@svc}"]
  end

  test "a runtime Node.start/2 without or with a bad ERL_DIST_PORT is an error and the VM lives",
       %{env: env, nodes: nodes} do
    vm = Node.start(nil, env: env)
    on_exit(fn -> stop_and_forget(vm, :"x@#{@svc}", nodes) end)
    port = DnsServer.free_port()

    start = ~s|Node.start(:"x@#{@svc}", :longnames)|

    assert {:error, reason} = Node.eval(vm, ~s|System.delete_env("ERL_DIST_PORT"); #{start}|)
    assert inspect(reason) =~ "ERL_DIST_PORT is not set: this node uses DynamicSrv.Epmd"

    assert {:error, reason} = Node.eval(vm, ~s|System.put_env("ERL_DIST_PORT", "abc"); #{start}|)
    assert inspect(reason) =~ ~s(ERL_DIST_PORT=\\"abc\\" is not a port number)

    assert {:error, reason} =
             Node.eval(
               vm,
               ~s|System.put_env("ERL_DIST_PORT", "#{port}"); System.put_env("DYNAMIC_SRV_TIMEOUT_MS", "soon"); #{start}|
             )

    assert inspect(reason) =~ "DYNAMIC_SRV_TIMEOUT_MS"

    # The VM lives, without distribution; with a good value it starts, and
    # connects through DNS.
    assert Node.eval(vm, "{node(), 1 + 1}") == {:nonode@nohost, 2}

    assert {:ok, _} =
             Node.eval(
               vm,
               ~s|System.delete_env("DYNAMIC_SRV_TIMEOUT_MS"); #{start}|
             )

    assert Node.eval(vm, "node()") == :"x@#{@svc}"
    assert Node.eval(vm, ~s|Node.connect(:"node-1@#{@svc}")|) == true
  end

  # Kills the VM, then waits until the shared nodes no longer list it: the
  # next test expects them connected to each other only. If they still do,
  # says whether the VM outlived its kill or a connection outlived the VM.
  defp stop_and_forget(vm, name, nodes) do
    Node.stop(vm)
    listing = fn -> Enum.filter(nodes, &(name in Node.eval(&1, "Node.list()"))) end

    case Wait.until(fn -> listing.() == [] end, 30_000) do
      {:ok, _} ->
        :ok

      :timeout ->
        flunk(
          "#{inspect(Enum.map(listing.(), & &1.name))} still list #{name} 30 s after its VM " <>
            "(OS pid #{vm.os_pid}, alive: #{File.exists?("/proc/#{vm.os_pid}")}) was killed"
        )
    end
  end
end
