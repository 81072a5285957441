defmodule Bench.LargeAnswers do
  @moduledoc false
  # Part C: SRV answers of 1,000 and 1,400 records from BIND's named (too
  # big for UDP: truncated, then TCP), asked by the NIF and by :inet_res in
  # the same run, and the strategy's whole poll (lookup, target parsing,
  # port book) at those sizes. One DNS message holds at most 65,535 bytes
  # and SRV targets are never compressed (RFC 2782): a record of these names
  # takes 46 bytes, so one SRV answer carries at most about 1,420 of them
  # (named sends 1,447 of 1,500 with TC set, even over TCP, and refuses to
  # load a set past about 1,900). The poll's own work at 5,000 targets
  # (parsing, atoms, port book) is measured with the strategy's `resolver`
  # option handing it 5,000 records.

  import Bench.Stats
  alias Bench.Report
  alias DynamicSrv.{Resolver, SrvPoll}
  alias DynamicSrv.Test.Named

  @zone "large.test"
  @sizes [1_000, 1_400]
  @no_dns_size 5_000
  @lookups 21
  @timeout 10_000

  def run do
    Report.emit("\n== C. Large answers (named, truncated over UDP, then TCP) ==\n\n")
    rows = Enum.map(@sizes, &measure/1) ++ [without_dns(@no_dns_size)]

    Report.emit(
      Report.table(
        [
          "records",
          "NIF p50 ms",
          ":inet_res p50 ms",
          "ratio",
          "<= 0.5x?",
          "strategy poll p50 ms (max_nodes = records)",
          "poll: SRV answer from"
        ],
        rows
      )
    )

    Report.emit("""

    #{@lookups} sequential lookups of each side per size, after one warm-up each; the poll \
    runs DynamicSrv.SrvPoll.poll/1 as the strategy does (lookup, target to node names, port book). \
    A DNS message holds at most 65,535 bytes and SRV targets are never compressed: one SRV \
    answer lists at most about 1,420 nodes named node-NNNN.<service> here (a server cuts a \
    larger one short even over TCP, which the NIF reports as an error, never as a smaller \
    membership), so the #{@no_dns_size}-target poll gets its answer from the strategy's \
    resolver option.

    """)
  end

  defp measure(size) do
    name = "s#{size}.#{@zone}"
    records = for i <- 1..size, do: {:srv, name, "node-#{i}.#{name}", 20_000 + rem(i, 40_000)}
    named = Named.start(@zone, records)

    try do
      ns = Named.nameservers(named)
      nif = fn -> Resolver.lookup_srv(name, nameservers: ns, timeout: @timeout) end

      inet = fn ->
        :inet_res.lookup(~c"#{name}", :in, :srv,
          nameservers: ns,
          edns: 0,
          udp_payload_size: 4096,
          timeout: @timeout
        )
      end

      {:ok, got} = nif.()
      ^size = length(got)
      ^size = length(inet.())

      nif_t = times(nif, &match?({:ok, [_ | _]}, &1))
      inet_t = times(inet, &match?([_ | _], &1))

      poll_t = poll_times(name, nil, ns, size)
      ratio = ratio(median(nif_t), median(inet_t))

      [
        "#{size}",
        fmt_ms(median(nif_t)),
        fmt_ms(median(inet_t)),
        fmt_ratio(ratio),
        yes_no(ratio != nil and ratio <= 0.5),
        fmt_ms(median(poll_t)),
        "named over TCP"
      ]
    after
      Named.stop(named)
    end
  end

  # The poll with the answer handed over by a `resolver` function: target
  # parsing, atoms and the port book at a size no DNS message can carry.
  defp without_dns(size) do
    service = "s#{size}.#{@zone}"

    answer = for i <- 1..size, do: {0, 1, 20_000 + i, ~c"node-#{i}.#{service}"}

    poll_t = poll_times(service, fn _query -> answer end, nil, size)
    ["#{size}", "-", "-", "-", "-", fmt_ms(median(poll_t)), "resolver function (no DNS)"]
  end

  # DynamicSrv.SrvPoll.poll/1 as the strategy runs it, `@lookups` times after a
  # first poll that must list `size` nodes.
  defp poll_times(service, resolver, nameservers, size) do
    config =
      SrvPoll.new(
        %{
          service: service,
          query: nil,
          resolver: resolver,
          nameservers: nameservers,
          timeout: @timeout,
          protocol: :udp,
          max_nodes: size
        },
        15_000
      )

    {:ok, nodes} = SrvPoll.poll(config)
    ^size = length(nodes)
    times(fn -> SrvPoll.poll(config) end, &match?({:ok, [_ | _]}, &1))
  end

  # Per-call times in microseconds; a wrong answer fails the part.
  defp times(fun, ok?) do
    for _ <- 1..@lookups do
      t0 = System.monotonic_time()
      answer = fun.()
      us = System.convert_time_unit(System.monotonic_time() - t0, :native, :nanosecond) / 1000
      if ok?.(answer), do: us, else: raise("a wrong answer: #{inspect(answer, limit: 3)}")
    end
  end
end
