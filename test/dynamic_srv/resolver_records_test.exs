defmodule DynamicSrv.ResolverRecordsTest do
  # Changes the records of its own server, so it runs alone.
  use ExUnit.Case, async: false

  @moduletag :dnsmasq

  alias DynamicSrv.Resolver
  alias DynamicSrv.Test.DnsServer

  test "answers with TTL 0 are never served from a cache" do
    server = DnsServer.start([{:srv, "svc.service.consul", "node-0.svc.service.consul", 4001}])
    on_exit(fn -> DnsServer.stop(server) end)
    opts = [nameservers: DnsServer.nameservers(server), timeout: 2_000]

    assert {:ok, [%{port: 4001}]} = Resolver.lookup_srv("svc.service.consul", opts)

    server =
      DnsServer.set_records(server, [
        {:srv, "svc.service.consul", "node-0.svc.service.consul", 4999}
      ])

    assert {:ok, [%{port: 4999}]} = Resolver.lookup_srv("svc.service.consul", opts)

    server = DnsServer.set_records(server, [])
    assert {:error, :nxdomain} = Resolver.lookup_srv("svc.service.consul", opts)

    server =
      DnsServer.set_records(server, [
        {:srv, "svc.service.consul", "node-0.svc.service.consul", 4002}
      ])

    assert {:ok, [%{port: 4002}]} = Resolver.lookup_srv("svc.service.consul", opts)
    DnsServer.stop(server)
  end
end
