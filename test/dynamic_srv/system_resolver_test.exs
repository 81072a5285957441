defmodule DynamicSrv.SystemResolverTest do
  @moduledoc """
  The system path (no explicit nameservers) as a pod sees it: a node in a
  network namespace with a resolv.conf of its own (`search` list,
  `options ndots:5`), dnsmasq on the bridge at port 53 as the cluster DNS.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Netns, Node}

  @moduletag timeout: 120_000

  setup do
    net = Netns.setup(1)
    [host] = net.hosts
    gateway = :inet.ntoa(net.gateway)

    Netns.resolv_conf(host, """
    nameserver #{gateway}
    search svc.cluster.local cluster.local
    options ndots:5
    """)

    on_exit(fn -> Netns.teardown(net) end)
    %{net: net, host: host}
  end

  defp start_node(host) do
    node = Node.start(nil, netns: host.ns)
    on_exit(fn -> Node.stop(node) end)
    node
  end

  test "names with dots go through the search list; a trailing dot makes a name absolute", %{
    net: net,
    host: host
  } do
    {a, b, c, _} = net.gateway
    web = {a, b, c, 10}
    app = {a, b, c, 11}

    dns =
      DnsServer.start(
        [
          {:srv, "web.default.svc.cluster.local", "web-0.web.default.svc.cluster.local", 4000},
          {:a, "web-0.web.default.svc.cluster.local", web},
          {:a, "node-1.app.cluster.local", app}
        ],
        listen: net.gateway,
        port: 53,
        # As a cluster DNS does: NXDOMAIN for unknown names of the cluster,
        # so the search goes on to the next domain.
        local: ["cluster.local"]
      )

    on_exit(fn -> DnsServer.stop(dns) end)
    node = start_node(host)

    # What the OS resolver gives, for comparison.
    assert Node.eval(node, ":inet.getaddr(~c\"node-1.app\", :inet)") == {:ok, app}

    assert {:ok, [%{port: 4000, target: "web-0.web.default.svc.cluster.local"}]} =
             Node.eval(node, ~s|DynamicSrv.Resolver.lookup_srv("web.default", timeout: 2_000)|)

    # The second search domain.
    assert Node.eval(node, ~s|DynamicSrv.Resolver.lookup_ip("node-1.app", :inet)|) == {:ok, [app]}

    # Absolute: the search list is not tried, and dnsmasq (no upstream)
    # refuses the bare name. (Before, any name with a dot was made
    # absolute: the two lookups above were refused the same way.)
    assert {:error, _} =
             Node.eval(node, ~s|DynamicSrv.Resolver.lookup_srv("web.default.", timeout: 2_000)|)

    assert {:ok, _} =
             Node.eval(
               node,
               ~s|DynamicSrv.Resolver.lookup_srv("web.default.svc.cluster.local.", timeout: 2_000)|
             )
  end
end
