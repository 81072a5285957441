defmodule DynamicSrv.SrvRecordsTest do
  @moduledoc """
  SRV answers as servers really give them: port-0 records, targets that
  differ only in case, and answers larger than `max_nodes` that the server
  rotates on every query.
  """
  # Counts the atoms the VM creates, so it runs alone.
  use ExUnit.Case, async: false

  alias DynamicSrv.{Srv, Target}
  alias DynamicSrv.Test.DnsServer

  defp unique_service, do: "s#{System.unique_integer([:positive])}.test"

  defp poll(service, resolver, max_nodes \\ 1024) do
    Srv.poll(%{service: service, resolver: resolver, max_nodes: max_nodes, book_ttl: 0})
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
             Target.to_nodes(["Node-1.svc.test", "node-1.svc.test"], "svc.test", 10)

    assert node == :"node-1@svc.test"
    assert {:ok, [{_, ^node}], []} = Target.to_nodes(["NODE-1.SVC.TEST."], "svc.test", 10)

    service = unique_service()

    resolver = fn _ ->
      [{0, 1, 4370, ~c"Node-1.#{service}"}, {0, 1, 4370, ~c"node-1.#{service}"}]
    end

    expected = :"node-1@#{service}"
    assert {:ok, [^expected]} = poll(service, resolver)
  end
end
