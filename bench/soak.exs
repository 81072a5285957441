# make soak: 1,000,000 lookups through the NIF against dnsmasq on loopback,
# with the resident memory of this VM sampled as they run. Exits 1 when the
# memory after the first 100,000 lookups grows by more than the bound.
alias DynamicSrv.Resolver
alias DynamicSrv.Test.{DnsServer, HostileDns}

total = String.to_integer(System.get_env("SOAK_LOOKUPS") || "1000000")
bound_kib = String.to_integer(System.get_env("SOAK_RSS_BOUND_KIB") || "16384")
concurrency = 200
step = 100_000

rss_kib = fn ->
  "/proc/#{System.pid()}/status"
  |> File.read!()
  |> String.split("\n")
  |> Enum.find_value(fn line ->
    case String.split(line) do
      ["VmRSS:", kib, "kB"] -> String.to_integer(kib)
      _ -> nil
    end
  end)
end

records =
  for i <- 1..3 do
    target = "node-#{i}.soak.service.consul"
    [{:srv, "soak.service.consul", target, 4000 + i}, {:a, target, {127, 0, 0, 1}}]
  end

dns = DnsServer.start(List.flatten(records))
silent = HostileDns.start(fn _ -> [] end)

try do
  ok_opts = [nameservers: DnsServer.nameservers(dns), timeout: 2_000]
  silent_opts = [nameservers: HostileDns.nameservers(silent), timeout: 50, attempts: 1]

  # Every 100th lookup goes to a server that never answers, so timeouts and
  # their bookkeeping are soaked too.
  lookup = fn i ->
    if rem(i, 100) == 0,
      do: Resolver.lookup_srv("soak.service.consul", silent_opts),
      else: Resolver.lookup_srv("soak.service.consul", ok_opts)
  end

  started = System.monotonic_time(:millisecond)

  samples =
    for chunk <- 0..(div(total, step) - 1) do
      results =
        (chunk * step + 1)..((chunk + 1) * step)
        |> Task.async_stream(lookup,
          max_concurrency: concurrency,
          ordered: false,
          timeout: 10_000
        )
        |> Enum.reduce(%{}, fn {:ok, result}, acc ->
          key = if match?({:ok, [_, _, _]}, result), do: :ok, else: result
          Map.update(acc, key, 1, &(&1 + 1))
        end)

      :erlang.garbage_collect()
      sample = {(chunk + 1) * step, rss_kib.(), :erlang.memory(:total) |> div(1024), results}

      IO.puts(
        "#{elem(sample, 0)} lookups: RSS #{elem(sample, 1)} KiB, BEAM #{elem(sample, 2)} KiB, #{inspect(results)}"
      )

      sample
    end

  elapsed = System.monotonic_time(:millisecond) - started
  {_, base, _, _} = hd(samples)
  {_, last, _, _} = List.last(samples)
  peak = samples |> Enum.map(&elem(&1, 1)) |> Enum.max()

  IO.puts("""

  #{total} lookups in #{elapsed} ms (#{div(total * 1000, max(elapsed, 1))}/s), #{concurrency} at a time
  RSS after #{step}: #{base} KiB; at the end: #{last} KiB; peak: #{peak} KiB
  growth after warm-up: #{last - base} KiB (bound #{bound_kib} KiB)
  """)

  if peak - base > bound_kib do
    IO.puts("FAILED: resident memory grew by #{peak - base} KiB")
    System.halt(1)
  end
after
  HostileDns.stop(silent)
  DnsServer.stop(dns)
end
