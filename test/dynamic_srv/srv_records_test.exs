defmodule DynamicSrv.SrvRecordsTest do
  @moduledoc """
  SRV answers as servers really give them: port-0 records, targets that
  differ only in case, and answers larger than `max_nodes` that the server
  rotates on every query.
  """
  # Counts the atoms the VM creates, so it runs alone.
  use ExUnit.Case, async: false

  @moduletag :dnsmasq

  alias DynamicSrv.{NodeAtoms, SrvPoll}
  alias DynamicSrv.Test.DnsServer

  defp unique_service, do: "s#{System.unique_integer([:positive])}.test"

  defp poll(service, resolver, max_nodes \\ 1024) do
    config = %SrvPoll{service: service, resolver: resolver, max_nodes: max_nodes, book_ttl: 0}
    SrvPoll.poll(config)
  end

  # How many of the 20 possible node names of `service` exist as atoms (the
  # VM's atom count moves with code loading too).
  defp atoms_made(service) do
    Enum.count(1..20, fn i ->
      try do
        String.to_existing_atom("n#{i}@#{service}")
      rescue
        ArgumentError -> false
      end
    end)
  end

  test "a port-0 record names no node" do
    service = unique_service()

    resolver = fn _ ->
      [
        {0, 1, 0, ~c"gone.#{service}"},
        {0, 1, 4370, ~c"live.#{service}"},
        # A node with a port-0 record next to a real one is still listed.
        {0, 1, 0, ~c"both.#{service}"},
        {0, 1, 4371, ~c"both.#{service}"}
      ]
    end

    assert {:ok, nodes} = poll(service, resolver)
    assert Enum.sort(nodes) == [:"both@#{service}", :"live@#{service}"]
  end

  test "targets differing only in case name one node, in lowercase" do
    assert {:ok, [{"Node-1.svc.test", node}], []} =
             NodeAtoms.to_nodes(["Node-1.svc.test", "node-1.svc.test"], "svc.test", 10)

    assert node == :"node-1@svc.test"
    assert {:ok, [{_, ^node}], []} = NodeAtoms.to_nodes(["NODE-1.SVC.TEST."], "svc.test", 10)

    service = unique_service()

    resolver = fn _ ->
      [{0, 1, 4370, ~c"Node-1.#{service}"}, {0, 1, 4370, ~c"node-1.#{service}"}]
    end

    expected = :"node-1@#{service}"
    assert {:ok, [^expected]} = poll(service, resolver)
  end

  test "a rotated answer larger than max_nodes gives the same names on every poll" do
    service = unique_service()
    records = for i <- 1..20, do: {0, 1, 5000 + i, ~c"n#{i}.#{service}"}
    counter = :counters.new(1, [])

    # Each call rotates the answer by three records, as a server that
    # rotates its answers does.
    resolver = fn _ ->
      :counters.add(counter, 1, 1)
      shift = rem(:counters.get(counter, 1) * 3, length(records))
      {head, tail} = Enum.split(records, shift)
      tail ++ head
    end

    names =
      for _ <- 1..20, reduce: MapSet.new() do
        seen ->
          assert {:ok, nodes} = poll(service, resolver, 10)
          assert length(nodes) == 10
          MapSet.union(seen, MapSet.new(nodes))
      end

    assert MapSet.size(names) == 10, "#{MapSet.size(names)} distinct node names over 20 polls"
    assert atoms_made(service) == 10
  end

  test "with dnsmasq rotating a 20-record answer, 30 polls with max_nodes 10 take 10 names" do
    service = unique_service()

    records =
      for i <- 1..20 do
        {:srv, service, "n#{i}.#{service}", 5000 + i}
      end

    dns = DnsServer.start(records)
    on_exit(fn -> DnsServer.stop(dns) end)

    config = %SrvPoll{
      service: service,
      resolver_opts: [nameservers: DnsServer.nameservers(dns), timeout: 2_000],
      max_nodes: 10,
      book_ttl: 0
    }

    {names, answers} =
      for _ <- 1..30, reduce: {MapSet.new(), MapSet.new()} do
        {seen, answers} ->
          # The answer's order, to show the server does rotate.
          {:ok, raw} = DynamicSrv.Resolver.lookup_srv(service, config.resolver_opts)
          assert {:ok, nodes} = SrvPoll.poll(config)
          assert length(nodes) == 10
          {MapSet.union(seen, MapSet.new(nodes)), MapSet.put(answers, Enum.map(raw, & &1.port))}
      end

    assert MapSet.size(answers) > 1, "the server did not rotate its answer"
    assert MapSet.size(names) == 10, "#{MapSet.size(names)} distinct node names over 30 polls"
    assert atoms_made(service) == 10
  end
end
