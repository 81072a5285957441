# Churn soak (part of `make soak`): 10 real nodes on dynamic ports with no
# epmd, running the strategy against dnsmasq, through at least 100 random
# events: kill a node, restart it on a new port, deregister a node (its
# records and strategy go, its VM stays), register it again, add or remove a
# junk record, stop DNS for a while. Nodes 0-2 are never touched. At the end
# every running, registered node's peers must equal what DNS lists, the
# survivors' strategy, port book and net_kernel must be the processes they
# were, and their process count, atom count and memory must stay within the
# bounds printed. Exits 1 otherwise. CHURN_EVENTS and CHURN_SEED adjust it.
alias DynamicSrv.Test.{DnsServer, Node, Wait}

svc = "churn.service.consul"
interval = 500
events = String.to_integer(System.get_env("CHURN_EVENTS") || "120")
seed = String.to_integer(System.get_env("CHURN_SEED") || "20261123")
:rand.seed(:exsss, {seed, seed, seed})
survivors = [0, 1, 2]

kinds =
  case System.get_env("CHURN_ONLY") do
    nil -> [:kill, :restart, :deregister, :register, :junk, :dns_outage]
    only -> only |> String.split(",") |> Enum.map(&String.to_existing_atom/1)
  end

bounds = %{processes: 40, atoms: 100, memory_kib: 20_480}

strategy = Node.strategy_code(:churn, svc, interval, :churn_strategy)

stats = """
:erlang.garbage_collect()
%{processes: :erlang.system_info(:process_count), atoms: :erlang.system_info(:atom_count),
  memory_kib: div(:erlang.memory(:total), 1024), modules: length(:code.all_loaded()),
  pids: {Process.whereis(:churn_strategy), Process.whereis(DynamicSrv.PortBook), Process.whereis(:net_kernel)}}
"""

records = fn state ->
  listed = for {i, %{listed: true, port: port}} <- state, do: {i, port}

  Enum.flat_map(listed, fn {i, port} ->
    target = "node-#{i}.#{svc}"
    [{:srv, svc, target, port}, {:a, target, {127, 0, 0, 1}}]
  end)
end

name = fn i -> :"node-#{i}@#{svc}" end
dns = DnsServer.start([])
# The pid file in its directory lets the first struct stop the latest server.
dns0 = dns

result =
  try do
    env = [
      {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
      {"DYNAMIC_SRV_TIMEOUT_MS", "300"}
    ]

    # Nodes are started by this process: a node's relay stops it when the
    # process that started it exits.
    start_node = fn i, wait ->
      port = DnsServer.free_port()
      node = Node.start("node-#{i}@#{svc}", dist_port: port, env: env, wait: wait)
      %{node: node, port: port, listed: true, running: true}
    end

    state = Map.new(0..9, fn i -> {i, start_node.(i, false)} end)
    for {_, %{node: node}} <- state, do: :ready = Node.eval(node, ":ready", 60_000)

    dns = DnsServer.set_records(dns, records.(state))
    for {_, %{node: node}} <- state, do: :started = Node.eval(node, strategy)

    expected = fn state, i ->
      for({j, %{listed: true, running: true}} <- state, j != i, do: name.(j)) |> Enum.sort()
    end

    converged? = fn state ->
      Enum.all?(state, fn
        {i, %{running: true, listed: true, node: node}} ->
          Enum.sort(Node.eval(node, "Node.list()")) == expected.(state, i)

        _ ->
          true
      end)
    end

    {:ok, _} = Wait.until(fn -> converged?.(state) end, 20_000, 250)
    IO.puts("10 nodes converged; #{events} events follow (seed #{seed})")
    # The survivors' baseline is taken after the first fifth of the events, so
    # that code loaded on first use (which creates atoms) is not counted.
    warmup = max(div(events, 5), 1)

    churn = fn {state, dns, log}, n ->
      k = Enum.random(3..9)
      slot = state[k]

      {event, state, dns} =
        case Enum.random(kinds) do
          :kill when slot.running ->
            Node.stop(slot.node)
            state = Map.put(state, k, %{slot | running: false, listed: false})
            {"kill node-#{k}", state, DnsServer.set_records(dns, records.(state))}

          :restart when not slot.running ->
            fresh = start_node.(k, true)
            state = Map.put(state, k, fresh)
            dns = DnsServer.set_records(dns, records.(state))
            :started = Node.eval(fresh.node, strategy)
            {"restart node-#{k} on port #{fresh.port}", state, dns}

          :deregister when slot.running and slot.listed ->
            Node.eval(slot.node, "Process.exit(Process.whereis(:churn_strategy), :kill)")
            state = Map.put(state, k, %{slot | listed: false})
            {"deregister node-#{k}", state, DnsServer.set_records(dns, records.(state))}

          :register when slot.running and not slot.listed ->
            state = Map.put(state, k, %{slot | listed: true})
            dns = DnsServer.set_records(dns, records.(state))
            :started = Node.eval(slot.node, strategy)
            {"register node-#{k} again", state, dns}

          :junk ->
            junk = [{:srv, svc, "junk #{n}!.#{svc}", 1}, {:srv, svc, "x.other.consul", 2}]
            dns = DnsServer.set_records(dns, records.(state) ++ junk)
            Process.sleep(300)
            {"junk records", state, DnsServer.set_records(dns, records.(state))}

          :dns_outage ->
            dns = DnsServer.pause(dns)
            Process.sleep(Enum.random(500..2_000))
            {"DNS outage", state, DnsServer.resume(dns)}

          _ ->
            {nil, state, dns}
        end

      Process.sleep(Enum.random(100..600))
      {state, dns, if(event, do: [event | log], else: log)}
    end

    run_events = fn acc, target ->
      Stream.iterate(1, &(&1 + 1))
      |> Enum.reduce_while(acc, fn n, acc ->
        {_, _, log} = acc = churn.(acc, n)
        if length(log) >= target, do: {:halt, acc}, else: {:cont, acc}
      end)
    end

    {state, dns, log} = run_events.({state, dns, []}, warmup)
    # Read twice: the first evaluation of the snippet itself creates atoms.
    for i <- survivors, do: Node.eval(state[i].node, stats)
    before = Map.new(survivors, fn i -> {i, Node.eval(state[i].node, stats)} end)
    {state, dns, log} = run_events.({state, dns, log}, events)

    counts = log |> Enum.frequencies_by(&(&1 |> String.split(" ") |> hd())) |> Enum.sort()
    IO.puts("events: #{length(log)} #{inspect(counts)}")

    result =
      case Wait.until(fn -> converged?.(state) end, 15_000, 250) do
        {:ok, _} ->
          after_ = Map.new(survivors, fn i -> {i, Node.eval(state[i].node, stats)} end)

          problems =
            for i <- survivors,
                b = before[i],
                a = after_[i],
                problem <- [
                  a.pids != b.pids &&
                    "node-#{i}: strategy, port book or net_kernel was restarted",
                  a.processes - b.processes > bounds.processes &&
                    "node-#{i}: processes #{b.processes} -> #{a.processes}",
                  a.atoms - b.atoms > bounds.atoms && "node-#{i}: atoms #{b.atoms} -> #{a.atoms}",
                  a.memory_kib - b.memory_kib > bounds.memory_kib &&
                    "node-#{i}: memory #{b.memory_kib} -> #{a.memory_kib} KiB"
                ],
                problem,
                do: problem

          for i <- survivors do
            b = before[i]
            a = after_[i]

            IO.puts(
              "node-#{i}: processes #{b.processes} -> #{a.processes}, atoms #{b.atoms} -> #{a.atoms} " <>
                "(modules loaded #{b.modules} -> #{a.modules}), " <>
                "memory #{b.memory_kib} -> #{a.memory_kib} KiB, same strategy/port book/net_kernel: #{a.pids == b.pids}"
            )
          end

          IO.puts("bounds: #{inspect(bounds)}")
          if problems == [], do: :ok, else: {:error, problems}

        :timeout ->
          {:error, ["membership did not settle to what DNS lists within 15 s"]}
      end

    for {_, %{node: node}} <- state, do: Node.stop(node)
    DnsServer.stop(dns)

    result
  after
    DnsServer.stop(dns0)
  end

case result do
  :ok ->
    IO.puts("churn soak: membership equals DNS, survivors flat")

  {:error, problems} ->
    IO.puts("churn soak FAILED: " <> Enum.join(problems, "; "))
    System.halt(1)
end
