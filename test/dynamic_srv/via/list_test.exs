defmodule DynamicSrv.Via.ListTest do
  @moduledoc """
  The fixed-list provider: entries with a port, recorded in the port book,
  and two real nodes on 127.0.0.1, each on its own ERL_DIST_PORT with
  DynamicSrv.Epmd, clustering through it with no DNS at all.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, RunnerSupport, Wait}

  @moduletag :dnsmasq
  @moduletag timeout: 120_000
  setup do
    on_exit(RunnerSupport.env_restorer())
  end

  test "entries may carry a port; names and ports are checked" do
    assert {:ok, %{node_list: [:a@h, {:"b@127.0.0.1", 4001}, {:c@h, 4002}]} = config} =
             DynamicSrv.Runner.prepare(
               via: DynamicSrv.Via.List,
               node_list: [:a@h, {"b@127.0.0.1", 4001}, {:c@h, 4002}]
             )

    assert DynamicSrv.Via.List.poll(config) == {:ok, [:a@h, :"b@127.0.0.1", :c@h]}

    for bad <- [{:a@h, 0}, {:a@h, 70_000}, {"no-at", 4001}, {:a@h, "4001"}, {:a@h, 1, 2}] do
      assert {:error, message} =
               DynamicSrv.Runner.prepare(via: DynamicSrv.Via.List, node_list: [bad])

      assert message =~ ":node_list is", message
      assert message =~ "{name, port}", message
    end
  end

  test "two nodes on 127.0.0.1 with their own ports cluster through the list" do
    ports = for _ <- 1..2, do: DnsServer.free_port()
    names = [:"a@127.0.0.1", :"b@127.0.0.1"]
    list = Enum.zip(names, ports)

    nodes =
      for {name, port} <- list do
        Node.start(Atom.to_string(name), dist_port: port)
      end

    on_exit(fn -> Enum.each(nodes, &Node.stop/1) end)

    code = """
    {:ok, pid} = DynamicSrv.Runner.start_link(
      via: DynamicSrv.Via.List, interval: 1, node_list: #{inspect(list)})
    Process.unlink(pid)
    :started
    """

    for node <- nodes, do: assert(Node.eval(node, code) == :started)

    [a, b] = nodes
    [a_name, b_name] = names

    assert {:ok, _} =
             Wait.until(
               fn ->
                 Node.eval(a, "Node.list()") == [b_name] and
                   Node.eval(b, "Node.list()") == [a_name]
               end,
               10_000
             ),
           inspect(Enum.map(nodes, &Node.eval(&1, "Node.list()")))

    # The book sent a's dial to b's port, not to a's own.
    [_, b_port] = ports

    assert Node.eval(a, ~s|DynamicSrv.PortBook.fetch_ports("b@127.0.0.1", :inet)|) ==
             {:ok, {127, 0, 0, 1}, [b_port]}
  end
end
