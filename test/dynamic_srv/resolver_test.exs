defmodule DynamicSrv.ResolverTest do
  use ExUnit.Case, async: true

  @moduletag :dnsmasq

  alias DynamicSrv.Resolver
  alias DynamicSrv.Test.DnsServer

  @big 160

  @records [
             {:srv, "svc.service.consul", "node-0.svc.service.consul", 4001},
             {:srv, "svc.service.consul", "node-1.svc.service.consul", 4002},
             {:srv, "svc.service.consul", "node-2.svc.service.consul", 4003, 1, 5},
             {:a, "node-0.svc.service.consul", {127, 0, 0, 1}},
             {:aaaa, "node-0.svc.service.consul", {0, 0, 0, 0, 0, 0, 0, 1}},
             {:a, "node-1.svc.service.consul", {127, 0, 0, 2}},
             {:a, "node-2.svc.service.consul", {127, 0, 0, 3}}
           ] ++
             for(
               i <- 1..@big,
               do: {:srv, "big.service.consul", "member-#{i}.big.service.consul", 10_000 + i}
             )

  setup_all do
    server = DnsServer.start(@records)
    on_exit(fn -> DnsServer.stop(server) end)
    %{server: server, opts: [nameservers: DnsServer.nameservers(server), timeout: 2_000]}
  end

  test "SRV answers carry priority, weight, port, target and additional addresses", %{opts: opts} do
    assert {:ok, records} = Resolver.lookup_srv("svc.service.consul", opts)
    assert length(records) == 3

    by_target = Map.new(records, &{&1.target, &1})
    assert %{port: 4001, priority: 0, weight: 1, ttl: 0} = by_target["node-0.svc.service.consul"]
    assert %{port: 4003, priority: 1, weight: 5} = by_target["node-2.svc.service.consul"]

    assert Enum.sort(by_target["node-0.svc.service.consul"].addresses) ==
             [{127, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 0, 1}]

    assert by_target["node-1.svc.service.consul"].addresses == [{127, 0, 0, 2}]
  end

  test "charlist names work as with :inet_res", %{opts: opts} do
    assert {:ok, [_, _, _]} = Resolver.lookup_srv(~c"svc.service.consul", opts)
  end

  test "A and AAAA lookups", %{opts: opts} do
    assert {:ok, [{127, 0, 0, 1}]} = Resolver.lookup_ip("node-0.svc.service.consul", :inet, opts)

    assert {:ok, [{0, 0, 0, 0, 0, 0, 0, 1}]} =
             Resolver.lookup_ip("node-0.svc.service.consul", :inet6, opts)
  end

  test "NXDOMAIN and no data are told apart", %{opts: opts} do
    assert {:error, :nxdomain} = Resolver.lookup_srv("nobody.service.consul", opts)
    assert {:error, :nxdomain} = Resolver.lookup_ip("nobody.service.consul", :inet, opts)
    assert {:error, :no_data} = Resolver.lookup_ip("node-1.svc.service.consul", :inet6, opts)
    assert {:error, :no_data} = Resolver.lookup_srv("node-1.svc.service.consul", opts)
  end

  test "a server that never answers gives :timeout within the deadline" do
    {:ok, silent} = :gen_udp.open(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(silent)
    started = System.monotonic_time(:millisecond)

    assert {:error, :timeout} =
             Resolver.lookup_srv("svc.service.consul",
               nameservers: [{{127, 0, 0, 1}, port}],
               timeout: 300
             )

    # The deadline is a contract, not a benchmark: the bound is loose.
    assert System.monotonic_time(:millisecond) - started < 300 + 1_000
    :gen_udp.close(silent)
  end

  test "a silent first nameserver: the next attempt asks the second one", %{server: server} do
    {:ok, silent} = :gen_udp.open(0, [:binary, active: false, ip: {127, 0, 0, 1}])
    {:ok, port} = :inet.port(silent)
    nameservers = [{{127, 0, 0, 1}, port} | DnsServer.nameservers(server)]

    try do
      # Each lookup spends its first attempt (half the deadline) on the silent
      # server, then gets its answer from dnsmasq.
      requests =
        for _ <- 1..20 do
          {:ok, request} =
            Resolver.request("svc.service.consul", :srv,
              nameservers: nameservers,
              timeout: 600,
              attempts: 2
            )

          request
        end

      for request <- requests, do: assert({:ok, [_, _, _]} = Resolver.await(request))
      # The silent server did get the first attempts.
      assert {:ok, {_, _, _}} = :gen_udp.recv(silent, 0, 0)
    after
      :gen_udp.close(silent)
    end
  end

  test "#{@big} records: the truncated UDP answer is fetched whole over TCP", %{opts: opts} do
    assert {:ok, records} = Resolver.lookup_srv("big.service.consul", opts)
    assert length(records) == @big
    assert Enum.sort(Enum.map(records, & &1.port)) == Enum.to_list(10_001..(10_000 + @big))
  end

  test "an answer trimmed to fit without TC (Consul's default) is asked again over TCP" do
    alias DynamicSrv.Test.SubsetDns

    records =
      for i <- 1..200,
          r <- [
            {:srv, "web.service.consul", "node-#{i}.web.service.consul", 5_000 + i},
            {:a, "node-#{i}.web.service.consul", {127, 0, 0, 1}}
          ],
          do: r

    dns = SubsetDns.start(records, mode: {:fit, 4_096})
    on_exit(fn -> SubsetDns.stop(dns) end)
    opts = [nameservers: SubsetDns.nameservers(dns), timeout: 10_000]

    # The first lookup asks over UDP, then over TCP; the second goes
    # straight to TCP. Counted per lookup: under load an attempt may time
    # out and be sent again, which is not what this test is about.
    counts = fn ->
      queries = SubsetDns.queries(dns)

      for protocol <- [:udp, :tcp],
          do: Map.get(queries, {"web.service.consul", :srv, protocol}, 0)
    end

    [first, second] =
      for _ <- 1..2 do
        before = counts.()
        assert {:ok, answer} = Resolver.lookup_srv("web.service.consul", opts)
        assert length(answer) == 200
        Enum.zip_with(counts.(), before, &-/2)
      end

    assert [udp, tcp] = first
    assert udp >= 1 and tcp >= 1, inspect(first)
    assert [0, tcp] = second
    assert tcp >= 1, inspect(second)
  end

  test "TCP only", %{opts: opts} do
    assert {:ok, [_, _, _]} = Resolver.lookup_srv("svc.service.consul", [protocol: :tcp] ++ opts)
  end

  test "bad names are refused at once with a reason", %{opts: opts} do
    assert {:error, {:invalid_name, _}} = Resolver.lookup_srv("", opts)
    assert {:error, {:invalid_name, _}} = Resolver.lookup_srv("a..b", opts)

    assert {:error, {:invalid_name, msg}} =
             Resolver.lookup_srv(String.duplicate("x", 64) <> ".consul", opts)

    assert msg =~ "63"
    assert {:error, {:invalid_name, _}} = Resolver.lookup_srv("bad name.consul", opts)

    assert {:error, {:invalid_name, _}} =
             Resolver.lookup_ip(String.duplicate("a.", 130), :inet, opts)
  end

  test "bad settings are refused with a reason" do
    assert {:error, {:bad_settings, _}} = Resolver.lookup_srv("svc.service.consul", timeout: -1)

    assert {:error, {:bad_settings, _}} =
             Resolver.lookup_srv("svc.service.consul", nameservers: [{:nope, 53}])

    assert {:error, {:bad_settings, _}} =
             Resolver.lookup_srv("svc.service.consul", protocol: :sctp)

    # The rule of DYNAMIC_SRV_NAMESERVERS and the strategy's config.
    for {server, says} <- [
          {{{0, 0, 0, 0}, 53}, "0.0.0.0:53 is the unspecified address"},
          {{{255, 255, 255, 255}, 53}, "255.255.255.255:53 is the broadcast address"},
          {{{239, 1, 2, 3}, 53}, "239.1.2.3:53 is a multicast address"}
        ] do
      assert {:error, {:bad_settings, message}} =
               Resolver.lookup_srv("svc.service.consul", nameservers: [server])

      assert message =~ says
    end
  end

  test "many lookups in flight from one process", %{opts: opts} do
    requests = for _ <- 1..200, do: elem(Resolver.request("svc.service.consul", :srv, opts), 1)
    results = Enum.map(requests, &Resolver.await/1)
    assert Enum.all?(results, &match?({:ok, [_, _, _]}, &1))
  end

  test "a burst of 2,000 lookups with one attempt each loses none", %{opts: opts} do
    # With attempts: 1 a query the server dropped would come back :timeout;
    # the window of queries in flight keeps a burst within what the
    # server's socket buffer holds.
    opts = Keyword.merge(opts, attempts: 1, timeout: 5_000)

    results =
      1..2_000
      |> Task.async_stream(fn _ -> Resolver.lookup_srv("svc.service.consul", opts) end,
        max_concurrency: 500,
        timeout: 10_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    failed = Enum.reject(results, &match?({:ok, [_, _, _]}, &1))
    assert failed == [], "#{length(failed)} failed, e.g. #{inspect(Enum.take(failed, 3))}"
  end
end
