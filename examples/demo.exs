# `make demo`: three nodes on dynamically assigned ports, no epmd daemon,
# finding each other through DNS SRV records served by a local dnsmasq.
alias DynamicSrv.Test.{DnsServer, Node, Wait}

defmodule Demo do
  @svc "demo.service.consul"
  def svc, do: @svc

  def records(members) do
    Enum.flat_map(members, fn {i, port} ->
      target = "node-#{i}.#{@svc}"
      [{:srv, @svc, target, port}, {:a, target, {127, 0, 0, 1}}]
    end)
  end

  def table(nodes, started) do
    rows =
      for {i, port, node} <- nodes do
        peers =
          node
          |> Node.eval("Node.list()")
          |> Enum.map(&(&1 |> Atom.to_string() |> String.split("@") |> hd()))

        {"node-#{i}@#{@svc}", port, peers |> Enum.sort() |> Enum.join(", ")}
      end

    ms = System.monotonic_time(:millisecond) - started
    IO.puts("\n  t=#{ms} ms")
    IO.puts("  " <> String.pad_trailing("node", 30) <> String.pad_leading("port", 6) <> "  peers")

    for {name, port, peers} <- rows do
      IO.puts(
        "  " <>
          String.pad_trailing(name, 30) <> String.pad_leading(to_string(port), 6) <> "  " <> peers
      )
    end

    rows
  end

  # Prints the table every half second until every node has `count` peers.
  def until_peers(nodes, started, count) do
    Wait.until(
      fn ->
        nodes
        |> table(started)
        |> Enum.all?(fn {_, _, peers} ->
          length(String.split(peers, ", ", trim: true)) == count
        end)
      end,
      15_000,
      500
    )
  end
end

started = System.monotonic_time(:millisecond)
members = for i <- 0..2, do: {i, DnsServer.free_port()}
dns = DnsServer.start(Demo.records(members))

IO.puts(
  "dnsmasq on 127.0.0.1:#{dns.port} serving SRV #{Demo.svc()} -> " <>
    Enum.map_join(members, ", ", fn {i, p} -> "node-#{i}:#{p}" end)
)

env = [{"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)}]

nodes =
  for {i, port} <- members do
    {i, port, Node.start("node-#{i}@#{Demo.svc()}", dist_port: port, env: env)}
  end

try do
  {epmd, _} = System.cmd("sh", ["-c", "pgrep -x epmd || echo none"])
  IO.puts("epmd processes: #{String.trim(epmd)}")

  code = Node.strategy_code(:demo, Demo.svc(), 1_000, :demo_strategy)
  for {_, _, node} <- nodes, do: :started = Node.eval(node, code)
  {:ok, _} = Demo.until_peers(nodes, started, 2)

  IO.puts(
    "\nFull mesh through DNS alone. node-2 deregisters: its records go and its strategy stops;" <>
      "\nthe other nodes' strategies drop it (two answers without it). The first to do so asks" <>
      "\nnode-2 to leave the whole cluster in one step (global:disconnect/0 on node-2), so OTP's" <>
      "\nglobal cuts no link between the two nodes that stay."
  )

  {survivors, [{_, _, n2}]} = Enum.split(nodes, 2)
  DnsServer.set_records(dns, Demo.records(Enum.take(members, 2)))
  Node.eval(n2, "Process.exit(Process.whereis(:demo_strategy), :kill)")
  {:ok, _} = Demo.until_peers(survivors, started, 1)

  Node.stop(n2)

  IO.puts(
    "\nnode-2 has left the cluster and is stopped. Demo done in " <>
      "#{System.monotonic_time(:millisecond) - started} ms."
  )
after
  Enum.each(nodes, fn {_, _, node} -> Node.stop(node) end)
  DnsServer.stop(dns)
end
