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
