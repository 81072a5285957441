defmodule DynamicSrv.HostileDnsTest do
  @moduledoc """
  The NIF resolver against a DNS server that lies, loops and overflows:
  every answer gives an error or a checked result, within the deadline;
  nothing crashes, nothing hangs, and the resolver keeps working.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Resolver
  alias DynamicSrv.Test.HostileDns, as: Dns

  @timeout 600
  @name "app.hostile.test"

  setup do
    server = Dns.start(fn _ -> [] end)
    on_exit(fn -> Dns.stop(server) end)

    %{
      server: server,
      opts: [nameservers: Dns.nameservers(server), timeout: @timeout, attempts: 1]
    }
  end

  defp timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {result, System.monotonic_time(:millisecond) - started}
  end

  defp valid(query) do
    {id, question} = Dns.split_query(query)
    [Dns.header(id, 1) <> question <> Dns.srv_rr("node-1." <> @name, 4000)]
  end

  test "every hostile answer gives an error within the deadline", %{server: server, opts: opts} do
    long_label = String.duplicate("a", 63)
    # 63+1 bytes per label, four labels: a 255-byte name on the wire.
    long_name = Enum.join([long_label, long_label, long_label, String.duplicate("b", 61)], ".")

    modes = %{
      wrong_id: fn q ->
        {id, question} = Dns.split_query(q)
        [Dns.header(rem(id + 1, 65_536), 1) <> question <> Dns.srv_rr("x." <> @name, 1)]
      end,
      garbage: fn _ -> [:crypto.strong_rand_bytes(7), <<>>, :crypto.strong_rand_bytes(600)] end,
      header_only: fn q ->
        {id, _} = Dns.split_query(q)
        [<<id::16, 0x81, 0x80>>]
      end,
      compression_loop: fn q ->
        {id, question} = Dns.split_query(q)
        offset = 12 + byte_size(question)
        # The answer's name is a pointer to itself.
        rr = <<0xC0 + div(offset, 256), rem(offset, 256), 33::16, 1::16, 0::32, 0::16>>
        [Dns.header(id, 1) <> question <> rr]
      end,
      counts_overflow: fn q ->
        {id, question} = Dns.split_query(q)
        [Dns.header(id, 65_535) <> question <> Dns.srv_rr("x." <> @name, 1)]
      end,
      rdata_overrun: fn q ->
        {id, question} = Dns.split_query(q)
        rr = <<0xC0, 12, 33::16, 1::16, 0::32, 60_000::16, 0::16, 1::16>>
        [Dns.header(id, 1) <> question <> rr]
      end,
      label_too_long: fn q ->
        {id, question} = Dns.split_query(q)
        rdata = <<0::16, 1::16, 1::16, 64, String.duplicate("z", 64)::binary, 0>>
        rr = <<0xC0, 12, 33::16, 1::16, 0::32, byte_size(rdata)::16, rdata::binary>>
        [Dns.header(id, 1) <> question <> rr]
      end,
      truncated_without_tcp: fn q ->
        {id, question} = Dns.split_query(q)
        [Dns.header(id, 0, flags: 0x8380) <> question]
      end
    }

    for {mode, fun} <- modes do
      Dns.set_mode(server, fun)
      {result, elapsed} = timed(fn -> Resolver.lookup_srv(@name, opts) end)
      assert {:error, reason} = result, "#{mode}: #{inspect(result)}"
      assert reason != :nxdomain and reason != :no_data, "#{mode}: #{inspect(reason)}"
      assert elapsed < @timeout + 500, "#{mode} took #{elapsed} ms"
    end

    # A name of 255 bytes with 63-byte labels is legal and comes back whole.
    Dns.set_mode(server, fn q ->
      {id, question} = Dns.split_query(q)
      [Dns.header(id, 1) <> question <> Dns.srv_rr(long_name, 7)]
    end)

    assert {:ok, [%{target: ^long_name, port: 7}]} = Resolver.lookup_srv(@name, opts)

    # A server that ignores the advertised payload and sends a 300-record
    # answer (about 15 KiB) in one UDP datagram: read whole.
    Dns.set_mode(server, fn q ->
      {id, question} = Dns.split_query(q)
      rrs = for i <- 1..300, into: <<>>, do: Dns.srv_rr("n#{i}." <> @name, i)
      [Dns.header(id, 300) <> question <> rrs]
    end)

    assert {:ok, records} = Resolver.lookup_srv(@name, opts)
    assert length(records) == 300

    # After all that, the resolver still answers.
    Dns.set_mode(server, &valid/1)
    assert {:ok, [%{target: "node-1." <> @name, port: 4000}]} = Resolver.lookup_srv(@name, opts)
  end

  test "a flood of lookups against a silent server all end in :timeout", %{opts: opts} do
    {:ok, requests} =
      1..500
      |> Enum.map(fn i -> Resolver.request("n#{i}." <> @name, :srv, opts) end)
      |> Enum.reduce({:ok, []}, fn {:ok, r}, {:ok, acc} -> {:ok, [r | acc]} end)

    {results, elapsed} = timed(fn -> Enum.map(requests, &Resolver.await/1) end)
    assert Enum.all?(results, &(&1 == {:error, :timeout}))
    assert elapsed < 2 * @timeout + 1_000
  end

  test "hundreds of lookups stuck on a silent server do not hold back another server", %{
    opts: opts
  } do
    working = Dns.start(&valid/1)
    on_exit(fn -> Dns.stop(working) end)

    stuck =
      for i <- 1..300,
          do:
            elem(Resolver.request("s#{i}." <> @name, :srv, Keyword.put(opts, :timeout, 3_000)), 1)

    working_opts = [nameservers: Dns.nameservers(working), timeout: 1_000, attempts: 1]
    assert {:ok, [%{port: 4000}]} = Resolver.lookup_srv(@name, working_opts)

    assert Enum.all?(stuck, &(Resolver.await(&1) == {:error, :timeout}))
  end
end
