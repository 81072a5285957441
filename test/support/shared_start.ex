defmodule DynamicSrv.Test.SharedStart do
  @moduledoc """
  A cluster of real nodes whose strategies all start at one wall-clock
  instant, as after a parallel rollout (a StatefulSet with
  `podManagementPolicy: Parallel`, a Nomad job) or when a partition heals.
  Shared by the cluster-start test and `make bench`.

  Each node runs `DynamicSrv.Epmd` on its own `ERL_DIST_PORT` and is listed
  (SRV and A record) in one dnsmasq that logs its queries. The nodes boot
  first; then every node is told the same instant, a little ahead, and
  sleeps until it before it starts `Cluster.Strategy.DynamicSrv`. No
  controller's message spreads the starts. `DynamicSrv.Test.ClusterProbe`
  records on each node when it saw all its peers, its nodedowns and
  `global`'s warnings.
  """

  alias DynamicSrv.Test.{DnsServer, Node, QueryLog, SubsetDns}

  defstruct [:n, :svc, :dns, :log, :nodes, :at, :interval]

  @doc """
  Boots `n` nodes listed under `svc` and waits until all are up. Options:
  `:interval` (the strategy's polling interval, ms, default 1000); `:dns`,
  `:dnsmasq` (default, logging its queries) or `{:subset, mode}`, a
  `DynamicSrv.Test.SubsetDns` answering the service in `mode`;
  `:logger_level` of the nodes (default `:info`, where users run them and
  where the strategy writes its connect and disconnect lines);
  `:lookup_timeout`, the nodes' DNS deadline in ms (`nil`: the package's
  default; by default the DNS server's setting for tests, 1 s);
  `:code_paths`, more directories of compiled modules for every node (the
  bench's libcluster stand-in).
  """
  @spec boot(pos_integer(), String.t(), keyword()) :: %__MODULE__{}
  def boot(n, svc, opts \\ []) do
    members = Enum.zip(1..n, ports(n))

    records = Enum.flat_map(members, fn {i, port} -> records(svc, i, port) end)

    {dns, log, env} = start_dns(Keyword.get(opts, :dns, :dnsmasq), records)

    env =
      case Keyword.fetch(opts, :lookup_timeout) do
        {:ok, ms} ->
          List.keystore(
            env,
            "DYNAMIC_SRV_TIMEOUT_MS",
            0,
            {"DYNAMIC_SRV_TIMEOUT_MS", ms && to_string(ms)}
          )

        :error ->
          env
      end

    probe = "DynamicSrv.Test.ClusterProbe.start(#{n - 1})"
    level = "-kernel logger_level #{Keyword.get(opts, :logger_level, :info)}"
    code_paths = opts |> Keyword.get(:code_paths, []) |> Enum.map(&"-pa #{&1}")
    erl = Enum.join([level | code_paths], " ")

    nodes =
      for {i, port} <- members do
        Node.start("node-#{i}@#{svc}",
          dist_port: port,
          env: env,
          eval: probe,
          erl: erl,
          wait: false
        )
      end

    cluster = %__MODULE__{
      n: n,
      svc: svc,
      dns: dns,
      log: log,
      nodes: nodes,
      interval: Keyword.get(opts, :interval, 1_000)
    }

    case Enum.reject(on_all(cluster, ":ready", 120_000), &(&1 == :ready)) do
      [] ->
        cluster

      not_ready ->
        stop(cluster)
        raise "#{length(not_ready)} of #{n} nodes did not boot: #{inspect(not_ready, limit: 3)}"
    end
  end

  defp start_dns(:dnsmasq, records) do
    dns = DnsServer.start(records, log_queries: true)
    {dns, QueryLog.start(Path.join(dns.dir, "queries.log")), DnsServer.node_env(dns)}
  end

  defp start_dns({:subset, mode}, records) do
    dns = SubsetDns.start(records, mode: mode)
    {dns, nil, SubsetDns.node_env(dns)}
  end

  @doc "The SRV and A records of node `i` listening on `port`."
  @spec records(%__MODULE__{} | String.t(), pos_integer(), :inet.port_number()) :: [tuple()]
  def records(%__MODULE__{svc: svc}, i, port), do: records(svc, i, port)

  def records(svc, i, port) do
    target = "node-#{i}.#{svc}"
    [{:srv, svc, target, port}, {:a, target, {127, 0, 0, 1}}]
  end

  @doc """
  Tells every node to start its strategy at one instant `lead_ms` from
  now; returns the cluster with that instant (wall-clock microseconds).
  """
  @spec start_strategies(%__MODULE__{}, pos_integer()) :: %__MODULE__{}
  def start_strategies(%__MODULE__{} = cluster, lead_ms \\ 2_000) do
    at = System.os_time(:microsecond) + lead_ms * 1_000
    strategy = Node.strategy_code(:shared_start, cluster.svc, cluster.interval, :shared_start)
    arm(cluster, at, "DynamicSrv.Test.ClusterProbe.at(#{at}, fn -> #{strategy} end)")
  end

  @doc """
  Drops every connection of every node at one instant `lead_ms` from now,
  as a partition that heals at once would leave them, after forgetting the
  recorded mesh time and counters; with `suspend?`, the strategies are
  suspended first (the drop alone). Returns the cluster with that instant.
  """
  @spec drop_all_connections(%__MODULE__{}, pos_integer(), boolean()) :: %__MODULE__{}
  def drop_all_connections(%__MODULE__{} = cluster, lead_ms \\ 1_000, suspend? \\ false) do
    at = System.os_time(:microsecond) + lead_ms * 1_000
    # Suspended, the strategy does not reconnect: what the nodes then
    # record is the drop's own doing.
    suspend = if suspend?, do: ":sys.suspend(:shared_start)", else: ":ok"

    arm(cluster, at, """
    DynamicSrv.Test.ClusterProbe.reset_at(#{at}, fn ->
      #{suspend}
      Enum.each(Node.list(), &:erlang.disconnect_node/1)
    end)
    """)
  end

  # Evaluates `code` (which schedules something at `at`) on every node.
  defp arm(cluster, at, code) do
    case Enum.reject(on_all(cluster, code, 10_000), &(&1 == :ok)) do
      [] -> %{cluster | at: at}
      failed -> raise "could not arm #{length(failed)} nodes: #{inspect(failed, limit: 3)}"
    end
  end

  @doc """
  Waits until every node has seen all its peers, or `timeout_ms` passes;
  returns every node's `ClusterProbe.report/0`.
  """
  @spec await_mesh(%__MODULE__{}, pos_integer()) :: [map()]
  def await_mesh(%__MODULE__{} = cluster, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    await(cluster, deadline)
  end

  # Each node records when it saw all its peers, so how often the nodes are
  # asked changes no figure, only the load the asking puts on the host: a
  # round of 100 nodes costs their VMs about 70 ms of CPU (measured
  # 2026-12-07, an idle cluster), which every 100 ms took about a quarter of
  # this 2-core host while the cluster formed.
  @await_every_ms 1_000

  defp await(cluster, deadline) do
    reports = on_all(cluster, "DynamicSrv.Test.ClusterProbe.report()", 10_000)
    meshed? = Enum.all?(reports, &(mesh_at(cluster, &1) != nil))

    if meshed? or System.monotonic_time(:millisecond) >= deadline do
      reports
    else
      Process.sleep(@await_every_ms)
      await(cluster, deadline)
    end
  end

  @doc """
  The figures of one start: ms from the instant to the full mesh on every
  node (`nil` if some node never saw all peers), DNS queries logged until
  then, and the sums of the nodes' counters.
  """
  @spec summary(%__MODULE__{}, [map()]) :: map()
  def summary(%__MODULE__{} = cluster, reports) do
    meshes = Enum.map(reports, &mesh_at(cluster, &1))
    mesh = if Enum.all?(meshes, &is_integer/1), do: Enum.max(meshes)

    %{
      n: cluster.n,
      mesh_ms: mesh && div(mesh - cluster.at, 1_000),
      meshed: Enum.count(meshes, &is_integer/1),
      queries: mesh && queries_between(cluster, cluster.at, mesh),
      overlap: sum(reports, :overlap),
      failed: sum(reports, :failed),
      downs: sum(reports, :downs),
      # Why setups failed, and the first failed connects, for a run that
      # did not come out clean.
      setup_exits:
        Enum.reduce(reports, %{}, &Map.merge(&2, &1.setup_exits, fn _, a, b -> a + b end)),
      failed_details: reports |> Enum.flat_map(& &1.failed_details) |> Enum.take(6)
    }
  end

  @doc "DNS queries the server logged between two wall-clock instants (µs)."
  @spec queries_between(%__MODULE__{}, integer(), integer()) :: non_neg_integer()
  def queries_between(%__MODULE__{log: nil}, _from, _to), do: nil

  def queries_between(%__MODULE__{log: log}, from, to) do
    log |> QueryLog.lines() |> Enum.count(fn {at, _, _} -> at >= from and at <= to end)
  end

  @doc """
  CPU seconds (user and system) the node VMs have used so far, summed, from
  `/proc/<pid>/stat`.
  """
  @spec cpu_seconds(%__MODULE__{}) :: float()
  def cpu_seconds(%__MODULE__{nodes: nodes}) do
    ticks =
      nodes
      |> Enum.map(fn node ->
        case File.read("/proc/#{node.os_pid}/stat") do
          # Fields after the command name (which may hold spaces): utime
          # and stime are the 12th and 13th.
          {:ok, stat} ->
            [_, rest] = String.split(stat, ") ", parts: 2)
            fields = String.split(rest, " ")
            String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))

          {:error, _} ->
            0
        end
      end)
      |> Enum.sum()

    ticks / clock_ticks()
  end

  defp clock_ticks do
    case System.cmd("getconf", ["CLK_TCK"], stderr_to_stdout: true) do
      {text, 0} -> text |> String.trim() |> String.to_integer()
      _ -> 100
    end
  end

  @doc "Evaluates `code` on every node at once; the values in node order."
  @spec on_all(%__MODULE__{}, String.t(), pos_integer()) :: [term()]
  def on_all(%__MODULE__{nodes: nodes}, code, timeout) do
    nodes
    |> Task.async_stream(&Node.eval(&1, code, timeout),
      max_concurrency: length(nodes),
      timeout: timeout + 10_000
    )
    |> Enum.map(fn {:ok, value} -> value end)
  end

  @doc "Stops every node and the DNS server."
  @spec stop(%__MODULE__{}) :: :ok
  def stop(%__MODULE__{nodes: nodes, dns: dns, log: log}) do
    Enum.each(nodes, &Node.stop/1)
    if log, do: QueryLog.stop(log)

    case dns do
      %SubsetDns{} -> SubsetDns.stop(dns)
      _ -> DnsServer.stop(dns)
    end
  end

  # A mesh seen before the instant (the one a heal starts from) does not count.
  defp mesh_at(%__MODULE__{at: start}, %{mesh_at: at}) when is_integer(at) and at >= start,
    do: at

  defp mesh_at(_cluster, _report), do: nil

  defp sum(reports, key), do: reports |> Enum.map(&Map.get(&1, key, 0)) |> Enum.sum()

  defp ports(n) do
    # free_port/0 never hands out a port twice.
    for _ <- 1..n, do: DnsServer.free_port()
  end
end
