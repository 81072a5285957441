# Departures: what a node leaving DNS costs the nodes that stay. Five real
# nodes on dynamic ports (no epmd) run the strategy against dnsmasq. Twenty
# times, one node's records are removed while its VM and strategy keep
# running, until the others have dropped it and it is connected to nobody;
# then its records come back and the mesh of five forms again. Every node
# records each nodedown it sees (with the node and the reason) and global's
# "overlapping partitions" warnings. A nodedown seen by a survivor about
# another survivor is a link between two staying nodes that the departure
# cut. Prints one line per removal and the totals.
#
#   MIX_ENV=dev mix run --no-start bench/departures.exs
#
# For comparison, DEPARTURES_FENCE=false runs the strategy without fencing,
# and DEPARTURES_DISCONNECT=each gives it the disconnect MFA
# :net_kernel.disconnect/1 (what :erlang.disconnect_node/1 does), with which
# each node disconnects a departed node itself instead of asking it to
# leave. DEPARTURES_ROUNDS and DEPARTURES_INTERVAL (ms) adjust the run.
alias DynamicSrv.Test.{DnsServer, Node, Wait}

svc = "departures.service.consul"
size = 5
rounds = String.to_integer(System.get_env("DEPARTURES_ROUNDS") || "20")
interval = String.to_integer(System.get_env("DEPARTURES_INTERVAL") || "1000")
fence = System.get_env("DEPARTURES_FENCE", "true") == "true"

disconnect =
  if System.get_env("DEPARTURES_DISCONNECT") == "each",
    do: {:net_kernel, :disconnect, []},
    else: {:erlang, :disconnect_node, []}

name = fn i -> :"node-#{i}@#{svc}" end

records = fn listed ->
  Enum.flat_map(listed, fn {i, port} ->
    target = "node-#{i}.#{svc}"
    [{:srv, svc, target, port}, {:a, target, {127, 0, 0, 1}}]
  end)
end

strategy = """
state = %{topology: :departures, config: [service: #{inspect(svc)}, polling_interval: #{interval}, fence: #{fence}],
          connect: {:net_kernel, :connect_node, []}, disconnect: #{inspect(disconnect)},
          list_nodes: {:erlang, :nodes, [:connected]}, meta: nil}
{:ok, pid} = Cluster.Strategy.DynamicSrv.start_link([state])
Process.unlink(pid)
Process.register(pid, :departures_strategy)
:started
"""

# Each node records its nodedowns (which node, why) and global's warnings.
watch = """
DynamicSrv.Test.NodeWatch.start()
DynamicSrv.Test.ClusterProbe.start(#{size - 1})
"""

take = """
downs = DynamicSrv.Test.NodeWatch.take_downs()
overlap = DynamicSrv.Test.ClusterProbe.report().overlap
DynamicSrv.Test.ClusterProbe.reset_at(0, fn -> :ok end)
{downs, overlap}
"""

dns = DnsServer.start([])

result =
  try do
    env = [
      {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
      {"DYNAMIC_SRV_TIMEOUT_MS", "500"}
    ]

    ports = Map.new(0..(size - 1), fn i -> {i, DnsServer.free_port()} end)

    nodes =
      Map.new(ports, fn {i, port} ->
        {i, Node.start("node-#{i}@#{svc}", dist_port: port, env: env)}
      end)

    dns = DnsServer.set_records(dns, records.(ports))
    for {_, node} <- nodes, do: :ok = Node.eval(node, watch)
    for {_, node} <- nodes, do: :started = Node.eval(node, strategy)

    peers = fn node -> node |> Node.eval(":erlang.nodes(:connected)") |> Enum.sort() end
    others = fn members, i -> for(j <- members, j != i, do: name.(j)) |> Enum.sort() end

    mesh? = fn members ->
      Enum.all?(members, fn i -> peers.(nodes[i]) == others.(members, i) end)
    end

    all = Map.keys(nodes)
    {:ok, _} = Wait.until(fn -> mesh?.(all) end, 20 * interval, 100)
    for {_, node} <- nodes, do: Node.eval(node, take)

    IO.puts(
      "#{size} nodes, polling every #{interval} ms, fencing #{fence}, disconnect #{inspect(disconnect)}; #{rounds} removals"
    )

    {rows, dns} =
      Enum.map_reduce(1..rounds, dns, fn round, dns ->
        victim = rem(round - 1, size)
        survivors = all -- [victim]
        dns = DnsServer.set_records(dns, records.(Map.delete(ports, victim)))
        removed = System.monotonic_time(:millisecond)

        left =
          Wait.until(
            fn -> mesh?.(survivors) and peers.(nodes[victim]) == [] end,
            10 * interval,
            50
          )

        left_ms = System.monotonic_time(:millisecond) - removed
        # A few more polls in which a survivor could still lose a link.
        Process.sleep(2 * interval)
        seen = Map.new(all, fn i -> {i, Node.eval(nodes[i], take)} end)

        # Nodedowns a survivor saw of another survivor while one left.
        between =
          for i <- survivors,
              {down, reason} <- elem(seen[i], 0),
              down != name.(victim),
              do: {i, down, reason}

        overlap = seen |> Map.values() |> Enum.map(&elem(&1, 1)) |> Enum.sum()

        dns = DnsServer.set_records(dns, records.(ports))
        {:ok, _} = Wait.until(fn -> mesh?.(all) end, 20 * interval, 100)
        Process.sleep(interval)
        # Any nodedown while the node came back is a cost too.
        back = Enum.flat_map(all, fn i -> nodes[i] |> Node.eval(take) |> elem(0) end)

        IO.puts(
          "removal #{round} (node-#{victim}): #{if left == :timeout, do: "NOT left", else: "left in #{left_ms} ms"}, " <>
            "#{length(between)} nodedown(s) between survivors, #{overlap} overlapping-partition warning(s), " <>
            "#{length(back)} nodedown(s) while it rejoined" <>
            if(between == [], do: "", else: " #{inspect(Enum.take(between, 3))}")
        )

        {%{
           left: left != :timeout,
           between: length(between),
           overlap: overlap,
           back: length(back)
         }, dns}
      end)

    sum = fn key -> rows |> Enum.map(&Map.fetch!(&1, key)) |> Enum.sum() end

    IO.puts(
      "total: #{sum.(:between)} nodedown(s) between survivors over #{rounds} removals " <>
        "(#{Enum.count(rows, &(&1.between > 0))} removal(s) with any), " <>
        "#{sum.(:overlap)} overlapping-partition warning(s), #{sum.(:back)} nodedown(s) while rejoining, " <>
        "#{Enum.count(rows, & &1.left)}/#{rounds} removed nodes connected to nobody within #{10 * interval} ms"
    )

    Enum.each(nodes, fn {_, node} -> Node.stop(node) end)
    {:ok, dns}
  rescue
    e -> {:error, e, __STACKTRACE__, dns}
  end

case result do
  {:ok, dns} ->
    DnsServer.stop(dns)

  {:error, e, stack, dns} ->
    DnsServer.stop(dns)
    reraise e, stack
end
