# Modules of the benchmark; loaded by bench/run.exs.

defmodule Bench.Stats do
  @moduledoc false

  @doc "The nearest-rank percentile `p` (0..100) of a non-empty list."
  def percentile(values, p) do
    sorted = Enum.sort(values)
    rank = max(ceil(p / 100 * length(sorted)), 1)
    Enum.at(sorted, rank - 1)
  end

  def median([]), do: nil
  def median(values), do: percentile(values, 50)

  def ratio(_a, b) when b in [0, nil], do: nil
  def ratio(nil, _b), do: nil
  def ratio(a, b), do: a / b

  def fmt_ratio(nil), do: "-"
  def fmt_ratio(r), do: :erlang.float_to_binary(r * 1.0, decimals: 2) <> "x"

  def fmt_int(nil), do: "-"
  def fmt_int(v), do: v |> round() |> Integer.to_string()

  def fmt_ms(nil), do: "-"
  def fmt_ms(us), do: :erlang.float_to_binary(us / 1000, decimals: 2)

  def yes_no(true), do: "yes"
  def yes_no(false), do: "NO"
  def yes_no(nil), do: "-"
end

defmodule Bench.Report do
  @moduledoc false
  @results Path.expand("results/latest.txt", __DIR__)

  @doc "Renders rows (lists of strings) under `headers` as an aligned table."
  def table(headers, rows) do
    all = [headers | rows]

    widths =
      Enum.reduce(all, List.duplicate(0, length(headers)), fn row, widths ->
        Enum.zip_with(row, widths, fn cell, w -> max(String.length(cell), w) end)
      end)

    line = fn row ->
      cells =
        row
        |> Enum.zip(widths)
        |> Enum.with_index()
        |> Enum.map(fn {{cell, w}, i} ->
          if i == 0, do: String.pad_trailing(cell, w), else: String.pad_leading(cell, w)
        end)

      "| " <> Enum.join(cells, " | ") <> " |"
    end

    rule = "|" <> Enum.map_join(widths, "|", &String.duplicate("-", &1 + 2)) <> "|"
    Enum.join([line.(headers), rule | Enum.map(rows, line)], "\n") <> "\n"
  end

  @doc "Prints `text` now and keeps it for the results file."
  def emit(text) do
    IO.write(text)
    Process.put(:bench_report, [text | Process.get(:bench_report, [])])
    text
  end

  def header do
    {dnsmasq, 0} = System.cmd(dnsmasq(), ["--version"], stderr_to_stdout: true)
    {named, _} = System.cmd(named(), ["-v"], stderr_to_stdout: true)

    emit("""
    libcluster_dynamic_srv benchmark, #{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}
    OTP #{System.otp_release()} (erts #{:erlang.system_info(:version)}), Elixir #{System.version()}, \
    #{:erlang.system_info(:logical_processors_available)} logical CPUs, \
    #{System.schedulers_online()} schedulers online
    #{dnsmasq |> String.split("\n") |> hd()}; #{String.trim(named)}
    Source: #{source()}
    Medians are nearest-rank; ratios are NIF / :inet_res measured in this same run.

    """)
  end

  def finish(elapsed_s) do
    emit("\nTotal bench time: #{elapsed_s} s\n")
    File.mkdir_p!(Path.dirname(@results))
    File.write!(@results, Process.get(:bench_report, []) |> Enum.reverse() |> Enum.join())
    IO.puts("Written to #{Path.relative_to_cwd(@results)}")
  end

  @doc "Runs one part; a crash is reported and the bench goes on."
  def part(name, fun) do
    fun.()
  catch
    kind, reason ->
      emit("\nPart #{name} FAILED: #{Exception.format(kind, reason, __STACKTRACE__)}\n")
  end

  # The commit, and which of lib/ and native/ differ from it.
  defp source do
    with {commit, 0} <-
           System.cmd("git", ["rev-parse", "--short", "HEAD"], stderr_to_stdout: true),
         {status, 0} <-
           System.cmd("git", ["status", "--porcelain", "--", "lib", "native"],
             stderr_to_stdout: true
           ) do
      dirty =
        status
        |> String.split("\n", trim: true)
        |> Enum.map(&(&1 |> String.slice(3..-1//1) |> String.split("/") |> Enum.take(2)))
        |> Enum.map(&Enum.join(&1, "/"))
        |> Enum.uniq()

      case dirty do
        [] -> "commit #{String.trim(commit)}"
        _ -> "commit #{String.trim(commit)} + uncommitted changes in #{Enum.join(dirty, ", ")}"
      end
    else
      _ -> "unknown (no git)"
    end
  rescue
    _ -> "unknown (no git)"
  end

  defp dnsmasq, do: System.find_executable("dnsmasq") || "/usr/sbin/dnsmasq"
  defp named, do: System.find_executable("named") || "/usr/sbin/named"
end

defmodule Bench.ResolverBench do
  @moduledoc false
  # Part A: DynamicSrv.Resolver (Rust NIF) against :inet_res, both asking
  # the same local server with EDNS0.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.Resolver
  alias DynamicSrv.Test.{DnsServer, Named}

  @small "small.bench.test"
  @big "big.bench.test"
  @zone "bench.test"
  @timeout 2_000

  def run do
    Report.emit("== A. NIF resolver vs :inet_res ==\n")
    small = for i <- 1..3, do: record(@small, i)
    big = for i <- 1..200, do: {:srv, @big, "node-#{i}.#{@big}", 20_000 + i}
    dns = DnsServer.start(List.flatten(small))

    try do
      ns = DnsServer.nameservers(dns)
      nif = fn -> Resolver.lookup_srv(@small, nameservers: ns, timeout: @timeout) end

      inet = fn ->
        :inet_res.lookup(~c"#{@small}", :in, :srv, nameservers: ns, edns: 0, timeout: @timeout)
      end

      a1 = sequential(nif, inet, &srv_count(&1, 3), 2_000, 250, 200)
      named = Named.start(@zone, big)

      a2 =
        try do
          big_answer(Named.nameservers(named))
        after
          Named.stop(named)
        end

      a3 = throughput(nif, inet, &srv_count(&1, 3), 2_000, 200, 7)
      # The same with rounds ten times longer: less of each round is the
      # ramp at its start and the stragglers at its end.
      a3_long = throughput(nif, inet, &srv_count(&1, 3), 20_000, 200, 3)
      a4 = scheduler_health(7)
      cache = cache_check()
      report(a1, a2, {a3, a3_long}, a4, cache)
    after
      DnsServer.stop(dns)
    end
  end

  defp record(name, i) do
    target = "node-#{i}.#{name}"
    [{:srv, name, target, 20_000 + i}, {:a, target, {127, 0, 0, 1}}]
  end

  # The number of SRV records of either side's answer, or :error.
  defp srv_count(answer, expected) do
    n =
      case answer do
        {:ok, records} -> length(records)
        records when is_list(records) -> length(records)
        _ -> -1
      end

    n == expected
  end

  # Interleaves blocks of `block` lookups of each side, after `warm`
  # warm-up lookups of each; returns the per-lookup times in microseconds.
  defp sequential(nif, inet, check, n, block, warm) do
    for _ <- 1..warm, do: {nif.(), inet.()}

    {nif_t, inet_t, bad} =
      Enum.reduce(1..div(n, block), {[], [], 0}, fn _, {nt, it, bad} ->
        {nt2, nb} = timed_block(nif, check, block)
        {it2, ib} = timed_block(inet, check, block)
        {nt2 ++ nt, it2 ++ it, bad + nb + ib}
      end)

    %{nif: nif_t, inet: inet_t, bad: bad, n: n}
  end

  defp timed_block(fun, check, count) do
    Enum.reduce(1..count, {[], 0}, fn _, {times, bad} ->
      t0 = System.monotonic_time()
      answer = fun.()
      t1 = System.monotonic_time()
      us = System.convert_time_unit(t1 - t0, :native, :nanosecond) / 1000
      {[us | times], if(check.(answer), do: bad, else: bad + 1)}
    end)
  end

  defp big_answer(ns) do
    nif = fn -> Resolver.lookup_srv(@big, nameservers: ns, timeout: @timeout) end

    # The same advertised payload as the NIF (4096), so both get a truncated
    # UDP answer and retry over TCP.
    inet = fn ->
      :inet_res.lookup(~c"#{@big}", :in, :srv,
        nameservers: ns,
        edns: 0,
        udp_payload_size: 4096,
        timeout: @timeout
      )
    end

    {:ok, nif_records} = nif.()
    inet_records = inet.()

    result = sequential(nif, inet, &srv_count(&1, 200), 300, 50, 20)

    Map.merge(result, %{
      nif_count: length(nif_records),
      inet_count: length(inet_records),
      udp: udp_probe(ns)
    })
  end

  # One raw UDP query with EDNS0 (payload 4096): the size of the answer and
  # whether the server set TC.
  defp udp_probe([{ip, port}]) do
    labels = for l <- String.split(@big, "."), into: <<>>, do: <<byte_size(l), l::binary>>
    question = <<labels::binary, 0, 33::16, 1::16>>
    opt = <<0, 41::16, 4096::16, 0::32, 0::16>>
    query = <<0x4242::16, 0::16, 1::16, 0::16, 0::16, 1::16, question::binary, opt::binary>>
    {:ok, socket} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])

    try do
      :ok = :gen_udp.send(socket, ip, port, query)
      {:ok, {_, _, answer}} = :gen_udp.recv(socket, 0, 2_000)
      <<_id::16, _qr::1, _op::4, _aa::1, tc::1, _::9, _qd::16, an::16, _::binary>> = answer
      %{bytes: byte_size(answer), tc: tc == 1, answers: an}
    after
      :gen_udp.close(socket)
    end
  end

  # `rounds` alternating rounds of `total` lookups spread over `concurrency`
  # processes, after one unmeasured round of each; lookups per second of
  # each round. A round lasts tens of milliseconds, so one hiccup of the
  # machine moves it: hence several rounds and their median.
  defp throughput(nif, inet, check, total, concurrency, rounds) do
    _warm_up = {burst(nif, check, total, concurrency), burst(inet, check, total, concurrency)}

    results =
      for _ <- 1..rounds do
        {burst(nif, check, total, concurrency), burst(inet, check, total, concurrency)}
      end

    %{
      nif: Enum.map(results, &elem(elem(&1, 0), 0)),
      inet: Enum.map(results, &elem(elem(&1, 1), 0)),
      bad: results |> Enum.map(fn {{_, a}, {_, b}} -> a + b end) |> Enum.sum(),
      total: total,
      concurrency: concurrency
    }
  end

  defp burst(fun, check, total, concurrency) do
    per = div(total, concurrency)
    parent = self()

    workers =
      for _ <- 1..concurrency do
        spawn_monitor(fn ->
          receive do: (:go -> :ok)
          ok = Enum.count(1..per, fn _ -> check.(fun.()) end)
          send(parent, {:done, self(), per - ok})
        end)
      end

    t0 = System.monotonic_time()
    Enum.each(workers, fn {pid, _} -> send(pid, :go) end)

    bad =
      Enum.reduce(workers, 0, fn {pid, ref}, bad ->
        receive do
          {:done, ^pid, n} ->
            receive do: ({:DOWN, ^ref, _, _, _} -> :ok)
            bad + n

          {:DOWN, ^ref, _, _, _} ->
            bad + per
        end
      end)

    seconds =
      System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond) / 1.0e6

    {per * concurrency / seconds, bad}
  end

  # A ticker asks for a 1 ms timeout in a loop and records how late each one
  # fires, while 1000 lookups (each in its own process) wait on a UDP socket
  # that never answers. Rounds alternate idle / NIF / :inet_res.
  defp scheduler_health(rounds) do
    {:ok, silent} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(silent)
    ns = [{{127, 0, 0, 1}, port}]

    try do
      nif = fn -> Resolver.lookup_srv(@small, nameservers: ns, timeout: 1_000) end

      inet = fn ->
        :inet_res.lookup(~c"#{@small}", :in, :srv,
          nameservers: ns,
          edns: 0,
          timeout: 1_000,
          retry: 1
        )
      end

      # The NIF's resolver for these settings is built by its first lookup.
      _ = Resolver.lookup_srv(@small, nameservers: ns, timeout: 50)

      results =
        for _ <- 1..rounds do
          %{
            idle: ticking(fn -> Process.sleep(1_000) end),
            control:
              ticking(fn -> wait_all(fn -> Process.sleep(1_000) end, 1_000, &(&1 == :ok)) end),
            nif: ticking(fn -> wait_all(nif, 1_000, &match?({:error, :timeout}, &1)) end),
            inet: ticking(fn -> wait_all(inet, 1_000, &(&1 == [])) end)
          }
        end

      Map.new([:idle, :control, :nif, :inet], fn key -> {key, Enum.map(results, & &1[key])} end)
    after
      :gen_udp.close(silent)
    end
  end

  defp ticking(load) do
    ticker = spawn(fn -> tick([]) end)
    Process.sleep(50)
    t0 = System.monotonic_time(:millisecond)
    outcome = load.()
    wall = System.monotonic_time(:millisecond) - t0
    Process.sleep(50)
    send(ticker, {:stop, self()})
    lateness = receive do: ({:ticks, l} -> l)

    %{
      max: Enum.max(lateness),
      p99: percentile(lateness, 99),
      ticks: length(lateness),
      wall_ms: wall,
      outcome: outcome
    }
  end

  defp tick(acc) do
    t0 = System.monotonic_time(:microsecond)

    receive do
      {:stop, from} -> send(from, {:ticks, acc})
    after
      1 -> tick([System.monotonic_time(:microsecond) - t0 - 1_000 | acc])
    end
  end

  # Starts `count` lookups in their own processes and waits for all; the
  # number of answers that matched `expected?`.
  defp wait_all(fun, count, expected?) do
    parent = self()
    tag = make_ref()
    for _ <- 1..count, do: spawn(fn -> send(parent, {tag, expected?.(fun.())}) end)
    # In arrival order: a selective receive per pid would scan the mailbox.
    Enum.count(1..count, fn _ -> receive do: ({^tag, ok} -> ok) end)
  end

  # The NIF must not answer TTL-0 records from a cache: 50 lookups against a
  # logging server must reach it 50 times.
  defp cache_check do
    dns = DnsServer.start(List.flatten(for i <- 1..3, do: record(@small, i)), log_queries: true)

    try do
      ns = DnsServer.nameservers(dns)
      for _ <- 1..50, do: {:ok, _} = Resolver.lookup_srv(@small, nameservers: ns)
      Process.sleep(100)
      DnsServer.query_count(dns)
    after
      DnsServer.stop(dns)
    end
  end

  defp report(a1, a2, {a3, a3_long}, a4, cache) do
    r1 = ratio(median(a1.nif), median(a1.inet))
    r2 = ratio(median(a2.nif), median(a2.inet))
    r3 = ratio(median(a3.nif), median(a3.inet))
    # A4: the median over rounds of each round's max (and p99) lateness.
    a4m = Map.new(a4, fn {k, rounds} -> {k, median(Enum.map(rounds, & &1.max))} end)
    a4p = Map.new(a4, fn {k, rounds} -> {k, median(Enum.map(rounds, & &1.p99))} end)
    per_round = fn k -> Enum.map_join(a4[k], "/", &fmt_ms(&1.max)) end
    p99 = &percentile(&1, 99)

    rows = [
      row(
        "A1 SRV, 3 records, sequential: p50 (us)",
        a1,
        &median/1,
        &fmt_int/1,
        "<= 0.60x",
        r1 <= 0.6
      ),
      row("A1 SRV, 3 records, sequential: p99 (us)", a1, p99, &fmt_int/1),
      row(
        "A2 SRV, 200 records, UDP->TCP: p50 (us)",
        a2,
        &median/1,
        &fmt_int/1,
        "<= 0.50x",
        r2 <= 0.5
      ),
      row("A2 SRV, 200 records, UDP->TCP: p99 (us)", a2, p99, &fmt_int/1),
      row(
        "A3 throughput, #{a3.total} lookups, #{a3.concurrency} concurrent (lookups/s)",
        a3,
        &median/1,
        &fmt_int/1,
        ">= 3.00x",
        r3 >= 3
      ),
      row(
        "A3 same, #{a3_long.total} lookups per round (lookups/s)",
        a3_long,
        &median/1,
        &fmt_int/1
      ),
      row(
        "A4 ticker max lateness, 1000 lookups on a silent server (ms)",
        a4m,
        & &1,
        &fmt_ms/1,
        "NIF <= 5 ms",
        a4m.nif <= 5_000
      ),
      row("A4 ticker p99 lateness, same load (ms)", a4p, & &1, &fmt_ms/1)
    ]

    Report.emit(
      Report.table(["measurement", "NIF", ":inet_res", "ratio", "target", "met?"], rows)
    )

    Report.emit("""

    Notes:
    * A1: #{a1.n} lookups per side after 200 warm-up lookups each, in alternating blocks of 250, \
    against dnsmasq (3 SRV records + 3 A records in the additional section, TTL 0); \
    #{a1.bad} lookup(s) with a wrong answer.
    * A2: #{a2.n} lookups per side after 20 warm-up each, against BIND named; records returned: \
    NIF #{a2.nif_count}, :inet_res #{a2.inet_count}. A raw UDP query with EDNS0 payload 4096 got \
    #{a2.udp.bytes} bytes, #{a2.udp.answers} answers, TC=#{a2.udp.tc} (so both sides retried over \
    TCP; :inet_res given udp_payload_size: 4096 like the NIF); #{a2.bad} wrong answer(s).
    * A3: median of #{length(a3.nif)} alternating rounds after one warm-up round each (NIF #{Enum.map_join(a3.nif, "/", &fmt_int/1)}, \
    :inet_res #{Enum.map_join(a3.inet, "/", &fmt_int/1)} lookups/s); each round #{a3.concurrency} \
    processes x #{div(a3.total, a3.concurrency)} lookups; #{a3.bad} failed lookup(s). With \
    #{a3_long.total} lookups per round, #{length(a3_long.nif)} rounds: NIF \
    #{Enum.map_join(a3_long.nif, "/", &fmt_int/1)}, :inet_res \
    #{Enum.map_join(a3_long.inet, "/", &fmt_int/1)} lookups/s; #{a3_long.bad} failed lookup(s).
    * A4: ticker = `receive after 1` in a loop at normal priority; lateness = measured wait - 1 ms, \
    over the whole load (launch of the 1000 lookup processes until all answered). Values are the \
    median over #{length(a4.nif)} rounds of each round's max; per round: NIF #{per_round.(:nif)}, \
    :inet_res #{per_round.(:inet)}, idle (no load) #{per_round.(:idle)} ms (idle p99 \
    #{fmt_ms(a4p.idle)} ms: timer granularity); control, 1000 processes that only sleep 1 s \
    (the cost of launching and waking the processes themselves): #{per_round.(:control)} ms. NIF timeout 1000 ms (2 attempts); :inet_res \
    timeout 1000 ms, retry 1. Time until all 1000 answered: NIF \
    #{Enum.map_join(a4.nif, "/", & &1.wall_ms)} ms (#{Enum.map_join(a4.nif, "/", & &1.outcome)} \
    timeouts), :inet_res #{Enum.map_join(a4.inet, "/", & &1.wall_ms)} ms \
    (#{Enum.map_join(a4.inet, "/", & &1.outcome)} empty answers).
    * No NIF cache for TTL 0: 50 NIF lookups reached a logging dnsmasq #{cache} time(s).

    """)
  end

  # One table row: the statistic `stat` of each side's figures, their ratio
  # and, when there is one, the target and whether it is met.
  defp row(label, %{nif: nif, inet: inet}, stat, fmt, target \\ "-", met \\ nil) do
    {n, i} = {stat.(nif), stat.(inet)}
    [label, fmt.(n), fmt.(i), fmt_ratio(ratio(n, i)), target, yes_no(met)]
  end
end

defmodule Bench.QueryLog do
  @moduledoc false
  # Follows dnsmasq's query log and stamps each query line with the wall
  # clock (System.os_time/1, shared with the nodes) when it was read.

  @every 5

  def start(path) do
    parent = self()

    spawn_link(fn ->
      {:ok, fd} = :file.open(path, [:read, :binary, :raw])
      send(parent, {:query_log, self()})
      loop(fd, "", [])
    end)
    |> tap(fn pid -> receive do: ({:query_log, ^pid} -> :ok) end)
  end

  @doc "Stops following; returns `[{os_time_us, type, name}]` in order."
  def stop(pid) do
    send(pid, {:stop, self()})
    receive do: ({:query_lines, ^pid, lines} -> lines)
  end

  defp loop(fd, partial, acc) do
    receive do
      {:stop, from} ->
        {_, acc} = read(fd, partial, acc)
        :file.close(fd)
        send(from, {:query_lines, self(), Enum.reverse(acc)})
    after
      @every ->
        {partial, acc} = read(fd, partial, acc)
        loop(fd, partial, acc)
    end
  end

  defp read(fd, partial, acc) do
    case :file.read(fd, 65_536) do
      {:ok, data} ->
        now = System.os_time(:microsecond)
        {lines, [rest]} = (partial <> data) |> String.split("\n") |> Enum.split(-1)

        acc =
          Enum.reduce(lines, acc, fn line, acc ->
            case Regex.run(~r/query\[(\w+)\] (\S+) from/, line) do
              [_, type, name] -> [{now, type, name} | acc]
              nil -> acc
            end
          end)

        read(fd, rest, acc)

      _eof ->
        {partial, acc}
    end
  end
end

defmodule Bench.Convergence do
  @moduledoc false
  # Part B: N real nodes, each on its own ERL_DIST_PORT with no epmd, all
  # listed in one dnsmasq that logs its queries.
  #
  # Main scenario ("together"): the N VMs boot concurrently; once every one
  # is up, all N strategies are started at the same moment (concurrent
  # evals). Nothing asks DNS before that, so every logged query until the
  # full mesh is convergence work.
  #
  # Second scenario ("at boot", one run per size, no target): each node
  # starts its strategy as its VM comes up, while the others still boot.

  import Bench.Stats
  alias Bench.{QueryLog, Report}
  alias DynamicSrv.Test.{DnsServer, Node}

  @interval 1_000
  @steady_ms 2_000
  # No new round of runs starts past this much bench time (ms); every size
  # gets at least one run.
  @budget 200_000

  def run(sizes, runs, bench_started) do
    Report.emit(
      "== B. Convergence (polling_interval #{@interval} ms, nodes started concurrently) ==\n"
    )

    together =
      Enum.reduce(1..runs, %{}, fn round, acc ->
        if round > 1 and System.monotonic_time(:millisecond) - bench_started > @budget do
          acc
        else
          Enum.reduce(sizes, acc, fn n, acc ->
            result = run_once(n, round, :together)
            IO.puts("  together N=#{n} run #{round}: #{summary(result)}")
            Map.update(acc, n, [result], &(&1 ++ [result]))
          end)
        end
      end)

    at_boot =
      for n <- sizes, into: %{} do
        result = run_once(n, 1, :at_boot)
        IO.puts("  at boot N=#{n}: #{summary(result)}")
        {n, result}
      end

    report(sizes, together, at_boot)
  end

  defp summary(%{error: e}), do: "FAILED: #{e}"

  defp summary(r) do
    "boot spread #{r.spread_ms} ms, strategy start spread #{r.start_spread_ms} ms, full mesh " <>
      "#{r.converge_ms} ms after the last strategy start, #{r.queries} DNS queries until then"
  end

  defp run_once(n, round, mode) do
    svc = "#{mode |> Atom.to_string() |> String.replace("_", "")}#{n}r#{round}.service.consul"
    members = Enum.zip(1..n, ports(n))

    records =
      Enum.flat_map(members, fn {i, port} ->
        target = "node-#{i}.#{svc}"
        [{:srv, svc, target, port}, {:a, target, {127, 0, 0, 1}}]
      end)

    dns = DnsServer.start(records, log_queries: true)

    try do
      log = QueryLog.start(Path.join(dns.dir, "queries.log"))

      env = [
        {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
        {"DYNAMIC_SRV_TIMEOUT_MS", "1000"}
      ]

      boot =
        if mode == :at_boot,
          do: watcher_code(n) <> strategy_code(svc),
          else: watcher_code(n)

      booted_at = System.os_time(:microsecond)

      nodes =
        for {i, port} <- members do
          Node.start("node-#{i}@#{svc}", dist_port: port, env: env, eval: boot, wait: false)
        end

      try do
        ready = all(nodes, ":ready", 60_000)

        cond do
          not Enum.all?(ready, &(&1 == :ready)) ->
            QueryLog.stop(log)
            %{error: "nodes not ready: #{inspect(Enum.reject(ready, &(&1 == :ready)), limit: 3)}"}

          mode == :together ->
            started = all(nodes, strategy_code(svc), 10_000)

            if Enum.all?(started, &(&1 == :started)),
              do: measure(n, nodes, log, svc, booted_at),
              else: %{error: "strategy did not start: #{inspect(started, limit: 3)}"}

          true ->
            measure(n, nodes, log, svc, booted_at)
        end
      after
        Enum.each(nodes, &Node.stop/1)
        if Process.alive?(log), do: QueryLog.stop(log)
      end
    after
      DnsServer.stop(dns)
    end
  catch
    kind, reason -> %{error: Exception.format_banner(kind, reason, __STACKTRACE__)}
  end

  defp ports(n) do
    ports = for _ <- 1..n, do: DnsServer.free_port()
    if length(Enum.uniq(ports)) == n, do: ports, else: ports(n)
  end

  defp all(nodes, code, timeout) do
    nodes
    |> Task.async_stream(&Node.eval(&1, code, timeout),
      max_concurrency: length(nodes),
      timeout: timeout + 10_000
    )
    |> Enum.map(fn {:ok, value} -> value end)
  end

  # Installed at boot on every node: a watcher that stamps the wall-clock
  # time (shared by all processes of the machine) at which the node first
  # sees all N-1 peers, and counts nodedowns.
  defp watcher_code(n) do
    """
    parent = self()

    spawn(fn ->
      :ok = :net_kernel.monitor_nodes(true)
      send(parent, :watching)

      check = fn ->
        if length(Node.list()) >= #{n - 1} and :persistent_term.get(:bench_mesh_at, nil) == nil,
          do: :persistent_term.put(:bench_mesh_at, System.os_time(:microsecond))
      end

      loop = fn loop, downs ->
        receive do
          {:nodeup, _} -> check.(); loop.(loop, downs)
          {:nodedown, _} -> :persistent_term.put(:bench_downs, downs + 1); loop.(loop, downs + 1)
        end
      end

      check.()
      loop.(loop, 0)
    end)

    receive do: (:watching -> :ok)
    """
  end

  # The strategy as libcluster would start it, with the time of its start.
  defp strategy_code(svc) do
    ":persistent_term.put(:bench_started, System.os_time(:microsecond))
" <>
      Node.strategy_code(:bench, svc, @interval, :bench_strategy)
  end

  @probe """
  polls =
    case Process.whereis(:bench_strategy) do
      nil -> 0
      pid -> :sys.get_state(pid).polls
    end

  {:persistent_term.get(:bench_started, nil), :persistent_term.get(:bench_mesh_at, nil),
   :persistent_term.get(:bench_downs, 0), length(Node.list()), polls}
  """

  defp measure(n, nodes, log, svc, booted_at) do
    deadline = System.monotonic_time(:millisecond) + 20_000
    {states, seen} = wait_mesh(nodes, deadline)

    if Enum.any?(states, fn {_, mesh, _, _, _} -> mesh == nil end) do
      QueryLog.stop(log)
      peers = Enum.map(states, &elem(&1, 3))
      %{error: "no full mesh within 20 s: peers per node #{inspect(peers)}"}
    else
      polls = states |> Enum.map(&elem(&1, 4)) |> Enum.sum()
      # After the mesh only the polls should ask DNS.
      Process.sleep(@steady_ms)
      later = System.os_time(:microsecond)
      lines = QueryLog.stop(log)
      starts = Enum.map(states, &elem(&1, 0))
      mesh = states |> Enum.map(&elem(&1, 1)) |> Enum.max()
      last_start = Enum.max(starts)
      first_start = Enum.min(starts)
      until_mesh = Enum.filter(lines, fn {t, _, _} -> t <= mesh end)
      after_mesh = Enum.filter(lines, fn {t, _, _} -> t > max(seen, mesh) and t <= later end)

      after_epmd =
        Enum.count(after_mesh, fn {_, _, name} -> String.starts_with?(name, "node-") end)

      %{
        n: n,
        spread_ms: div(last_start - booted_at, 1000),
        start_spread_ms: div(last_start - first_start, 1000),
        converge_ms: div(mesh - last_start, 1000),
        from_first_ms: div(mesh - first_start, 1000),
        queries: length(until_mesh),
        after_last_start: Enum.count(until_mesh, fn {t, _, _} -> t >= last_start end),
        kinds: kinds(until_mesh, svc),
        polls: polls,
        after_mesh: "#{length(after_mesh)} (#{after_epmd})",
        downs: states |> Enum.map(&elem(&1, 2)) |> Enum.sum()
      }
    end
  end

  # The probes of all nodes, and the wall-clock time the last round began.
  defp wait_mesh(nodes, deadline) do
    began = System.os_time(:microsecond)
    states = all(nodes, @probe, 5_000)

    cond do
      Enum.all?(states, fn {_, mesh, _, _, _} -> mesh != nil end) -> {states, began}
      System.monotonic_time(:millisecond) > deadline -> {states, began}
      true -> Process.sleep(50) && wait_mesh(nodes, deadline)
    end
  end

  defp kinds(lines, svc) do
    Enum.frequencies_by(lines, fn {_, type, name} ->
      cond do
        type == "SRV" and name == svc -> "SRV service"
        type == "SRV" -> "SRV node-i"
        true -> "#{type} node-i"
      end
    end)
  end

  defp report(sizes, together, at_boot) do
    rows =
      for n <- sizes do
        runs = Map.get(together, n, [])
        ok = Enum.reject(runs, &Map.has_key?(&1, :error))
        conv = median(Enum.map(ok, & &1.converge_ms))
        queries = median(Enum.map(ok, & &1.queries))
        time_ok = conv != nil and conv <= @interval + 1_000
        queries_ok = queries != nil and queries <= 3 * n

        [
          "#{n}",
          "#{length(ok)}/#{length(runs)}",
          fmt_int(conv),
          Enum.map_join(ok, "/", &"#{&1.converge_ms}"),
          yes_no(time_ok),
          fmt_int(queries),
          Enum.map_join(ok, "/", &"#{&1.queries}"),
          "#{3 * n}",
          yes_no(queries_ok)
        ]
      end

    Report.emit(
      Report.table(
        [
          "N",
          "runs ok",
          "converge ms (median)",
          "per run",
          "<= 2000 ms?",
          "DNS queries (median)",
          "per run",
          "3N",
          "<= 3N?"
        ],
        rows
      )
    )

    detail =
      for n <- sizes,
          {r, i} <- Enum.with_index(Map.get(together, n, []), 1),
          not Map.has_key?(r, :error) do
        [
          "#{n}",
          "#{i}",
          "#{r.spread_ms}",
          "#{r.start_spread_ms}",
          "#{r.from_first_ms}",
          fmt_kinds(r.kinds),
          "#{r.polls}",
          r.after_mesh,
          "#{r.downs}"
        ]
      end

    Report.emit("""

    "converge ms": from the last node's strategy start to the moment the last node sees N-1 \
    peers (each node stamps :nodeup with the machine's wall clock). "DNS queries": query lines \
    dnsmasq logged from its start until that moment (none come before the strategies start; \
    each line is stamped when the bench reads the log, every 5 ms); targets: \
    <= polling_interval + 1 s and <= 3N. Each VM boots with ERL_DIST_PORT, -start_epmd false \
    -epmd_module Elixir.DynamicSrv.Epmd, DYNAMIC_SRV_TIMEOUT_MS=1000.

    """)

    Report.emit(
      Report.table(
        [
          "N",
          "run",
          "VMs up after ms",
          "start spread ms",
          "mesh after 1st start ms",
          "queries until mesh, by kind",
          "strategy polls",
          "next #{@steady_ms} ms: queries (node-i)",
          "nodedowns"
        ],
        detail
      )
    )

    Report.emit("""

    "strategy polls": the membership engines' poll counters, read when the mesh was seen; SRV \
    <service> queries beyond that count, and SRV/A node-i queries, come from \
    DynamicSrv.Epmd.address_please (a port-book miss asks SRV node-i, then SRV <service> on \
    NXDOMAIN, plus A node-i; a port-book entry without an address asks A node-i); OTP makes \
    the first of these calls inside net_kernel (select/1), the second from the connection's \
    setup process. "next #{@steady_ms} ms": DNS queries logged in the #{@steady_ms} ms after the \
    mesh was seen (each node polls about once a second), in parentheses those for node-i names \
    (epmd lookups; expected 0).

    At boot (no target, one run per size): each node starts its strategy as its VM comes up; \
    "mesh after last start" < 0 means the others connected to the last node as soon as its \
    distribution listened, before its strategy started.

    """)

    boot_rows =
      for n <- sizes do
        case at_boot[n] do
          %{error: e} ->
            ["#{n}", "FAILED: #{e}", "-", "-", "-", "-"]

          r ->
            [
              "#{n}",
              "#{r.start_spread_ms}",
              "#{r.converge_ms}",
              "#{r.queries}",
              fmt_kinds(r.kinds),
              "#{r.after_last_start}"
            ]
        end
      end

    Report.emit(
      Report.table(
        [
          "N",
          "strategy start spread ms",
          "mesh after last start ms",
          "queries until mesh",
          "by kind",
          "of which after last start"
        ],
        boot_rows
      )
    )

    failures =
      for n <- sizes,
          r <- Map.get(together, n, []),
          Map.has_key?(r, :error),
          do: "FAILED N=#{n}: #{r.error}\n"

    Report.emit(Enum.join(failures) <> "\n")
  end

  defp fmt_kinds(kinds) when map_size(kinds) == 0, do: "-"

  defp fmt_kinds(kinds),
    do: kinds |> Enum.sort() |> Enum.map_join(", ", fn {k, v} -> "#{k}: #{v}" end)
end
