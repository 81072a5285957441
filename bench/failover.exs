defmodule Bench.Failover do
  @moduledoc false
  # Part E: DNS servers that fail. `nameservers: [dead, live]`, the first
  # one down as in a two-agent setup, in two ways: a closed port (the
  # kernel answers with ICMP port unreachable) and a silent one (a socket
  # that reads queries and answers none). For each: the first lookup, the
  # median and 99th percentile of the 200 that follow against the
  # median of the live server alone (measured in this run, lookups
  # interleaved), and :inet_res with the same servers. Then the silent
  # server stays down for another @down_ms while a lookup runs every
  # 100 ms (its probes fail, their waits double), and comes back (it
  # starts answering): the time until lookups use it again, as they ask it
  # first.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.Resolver
  alias DynamicSrv.Test.DnsServer

  @name "small.failover.test"
  @timeout 3_000
  @later 200
  @target 2.0
  # One attempt's timeout, in microseconds: the bound of the first lookup.
  @attempt_us div(@timeout, 2) * 1_000
  # The first lookup may take one attempt's timeout and the live server's
  # answer: this much over the timeout.
  @answer_us 10_000
  @down_ms 10_000

  def run do
    Report.emit("""
    == E. A DNS server that fails, listed first (timeout #{@timeout} ms, 2 attempts) ==

    """)

    live = DnsServer.start([{:srv, @name, "node-1.#{@name}", 4001}])

    try do
      [live_ns] = DnsServer.nameservers(live)
      # Warm-up: the NIF's runtime, the code paths.
      for _ <- 1..50, do: {:ok, _} = lookup([live_ns])

      {closed_ns, closed} = closed_server()
      {silent_ns, silent} = silent_server()

      rows =
        for {label, dead_ns} <- [{"closed port", closed_ns}, {"silent", silent_ns}] do
          measure(label, [dead_ns, live_ns], [live_ns])
        end

      Report.emit(
        Report.table(
          [
            "first server",
            "first lookup ms",
            "later p50 ms",
            "later p99 ms",
            "live alone p50 ms",
            "later / alone",
            ":inet_res p50 ms",
            "target met?"
          ],
          rows
        )
      )

      :gen_udp.close(closed)
      back_ms = comes_back(silent, [silent_ns, live_ns])

      Report.emit("""

      The silent server, down #{div(@down_ms, 1000)} s more (a lookup every 100 ms), starts \
      answering: lookups (every 10 ms) use it again after #{back_ms} ms (probes are due \
      1 s after a failure, then at doubling waits up to 30 s: at most 30 s).
      """)
    after
      DnsServer.stop(live)
    end
  end

  defp lookup(ns), do: Resolver.lookup_srv(@name, nameservers: ns, timeout: @timeout)

  defp measure(label, servers, [live_ns]) do
    {first_us, {:ok, _}} = :timer.tc(fn -> lookup(servers) end)

    {later, alone} =
      Enum.reduce(1..@later, {[], []}, fn _, {later, alone} ->
        {t1, {:ok, _}} = :timer.tc(fn -> lookup(servers) end)
        {t2, {:ok, _}} = :timer.tc(fn -> lookup([live_ns]) end)
        {[t1 | later], [t2 | alone]}
      end)

    inet =
      for _ <- 1..5 do
        {t, _} =
          :timer.tc(fn ->
            :inet_res.lookup(~c"#{@name}", :in, :srv, nameservers: servers, timeout: @timeout)
          end)

        t
      end

    ratio = ratio(median(later), median(alone))

    [
      label,
      fmt_ms(first_us),
      fmt_ms(median(later)),
      fmt_ms(percentile(later, 99)),
      fmt_ms(median(alone)),
      fmt_ratio(ratio),
      fmt_ms(median(inet)),
      yes_no(first_us <= @attempt_us + @answer_us and ratio <= @target)
    ]
  end

  # A UDP port with nothing listening: bound, then closed.
  defp closed_server do
    {:ok, socket} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(socket)
    :gen_udp.close(socket)
    # Held open again only to be closed at the end (the port stays free).
    {:ok, holder} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {{{127, 0, 0, 1}, port}, holder}
  end

  defp silent_server do
    {:ok, socket} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(socket)
    {{{127, 0, 0, 1}, port}, socket}
  end

  # The silent server answers from now on (every query with no records):
  # the ms until a lookup gets its answer rather than the live server's.
  defp comes_back(socket, servers) do
    for _ <- 1..div(@down_ms, 100) do
      {:ok, _} = lookup(servers)
      Process.sleep(100)
    end

    # A restarted server: a new socket on the same port, without the
    # queries the old one left unread.
    {:ok, port} = :inet.port(socket)
    :gen_udp.close(socket)
    {:ok, socket} = :gen_udp.open(port, [:binary, active: false, ip: {127, 0, 0, 1}])
    responder = spawn_link(fn -> answer(socket) end)
    :ok = :gen_udp.controlling_process(socket, responder)
    send(responder, :go)
    started = System.monotonic_time(:millisecond)

    result =
      Enum.reduce_while(1..6_000, nil, fn _, _ ->
        case lookup(servers) do
          {:error, :no_data} ->
            {:halt, System.monotonic_time(:millisecond) - started}

          _ ->
            Process.sleep(10)
            {:cont, nil}
        end
      end)

    Process.unlink(responder)
    Process.exit(responder, :kill)
    :gen_udp.close(socket)
    result || "over 60,000"
  end

  defp answer(socket) do
    receive do
      :go -> :ok
    end

    loop(socket)
  end

  defp loop(socket) do
    case :gen_udp.recv(socket, 0) do
      {:ok, {ip, port, <<id::16, flags::16, rest::binary>>}} ->
        :gen_udp.send(socket, ip, port, <<id::16, Bitwise.bor(flags, 0x8000)::16, rest::binary>>)
        loop(socket)

      {:error, _} ->
        :ok
    end
  end
end
