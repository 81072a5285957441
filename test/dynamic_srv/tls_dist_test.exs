defmodule DynamicSrv.TlsDistTest do
  @moduledoc """
  Real BEAM nodes with TLS distribution (`-proto_dist inet_tls`), each on its
  own ERL_DIST_PORT, with no epmd daemon, finding each other through DNS
  only. Certificates are made with openssl for this run: a cluster CA and
  its node certificates, and a second CA that the cluster does not trust.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{Certs, DnsServer, Node, NoEpmd}

  @svc "svc.service.consul"
  @moduletag :dnsmasq
  @moduletag :openssl
  @moduletag timeout: 180_000

  # {name, DNS names in its certificate, CA that signs it, distribution}
  #
  # OTP's TLS distribution dials `name@host` with `host` as the TLS server
  # name, so a node certificate names the host part of the node names.
  # node-2 carries a wildcard, which only the `https` match function of the
  # client options accepts.
  @nodes [
    {"node-0", ["svc.service.consul", "node-0.svc.service.consul"], :ca, :tls},
    {"node-1", ["svc.service.consul", "node-1.svc.service.consul"], :ca, :tls},
    {"node-2", ["*.service.consul"], :ca, :tls},
    # Signed by a CA of its own, which it trusts along with the cluster's.
    {"intruder", ["svc.service.consul"], :rogue_ca, :tls},
    # Signed by the cluster's CA, but for another host.
    {"misnamed", ["other.service.consul"], :ca, :tls},
    # Plain TCP distribution, same cookie.
    {"plain", [], nil, :tcp}
  ]

  setup_all do
    dir = Path.join(System.tmp_dir!(), "dynamic_srv_tls_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)

    Certs.make_ca(dir, "ca", "DynamicSrv test cluster CA")
    Certs.make_ca(dir, "rogue_ca", "DynamicSrv test rogue CA")
    File.write!(Path.join(dir, "both_cas.pem"), [read(dir, "rogue_ca.pem"), read(dir, "ca.pem")])

    ports = Map.new(@nodes, fn {name, _, _, _} -> {name, DnsServer.free_port()} end)

    records =
      Enum.flat_map(@nodes, fn {name, _, _, _} ->
        target = "#{name}.#{@svc}"
        port = ports[name]
        [{:srv, @svc, target, port}, {:srv, target, target, port}, {:a, target, {127, 0, 0, 1}}]
      end)

    dns = DnsServer.start(records, log_queries: true)
    on_exit(fn -> DnsServer.stop(dns) end)

    env = [
      {"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)},
      {"DYNAMIC_SRV_TIMEOUT_MS", "1000"}
    ]

    # Certificates first, then all VMs boot at once.
    started =
      for {name, dns_names, ca, proto} <- @nodes do
        erl =
          case proto do
            :tcp ->
              ""

            :tls ->
              Certs.make_cert(dir, name, ca, dns_names, "#{name}.#{@svc}")
              cacertfile = if ca == :rogue_ca, do: "both_cas.pem", else: "ca.pem"
              optfile = write_optfile(dir, name, cacertfile)
              "-proto_dist inet_tls -ssl_dist_optfile #{optfile}"
          end

        node =
          Node.start("#{name}@#{@svc}", dist_port: ports[name], env: env, erl: erl, wait: false)

        {name, node}
      end

    on_exit(fn -> Enum.each(started, fn {_, node} -> Node.stop(node) end) end)

    for {name, node} <- started do
      assert Node.eval(node, ":ready", 30_000) == :ready, "#{name} did not start"
    end

    nodes = Map.new(started)
    trusted = Enum.map(~w(node-0 node-1 node-2), &nodes[&1])

    # The trusted nodes connect here, before any test runs, so the first
    # test knows what it took: the tests run in random order.
    before = DnsServer.query_count(dns)
    mesh = connect_mesh(trusted)
    mesh_queries = DnsServer.query_count(dns) - before

    %{
      dir: dir,
      dns: dns,
      nodes: nodes,
      trusted: trusted,
      ports: ports,
      mesh: mesh,
      mesh_queries: mesh_queries
    }
  end

  test "three nodes with certificates of the cluster's CA form a full mesh over TLS, through DNS, with no epmd",
       %{trusted: trusted, ports: ports, mesh: mesh, mesh_queries: mesh_queries} do
    # node-0 dialled node-1 and node-2, node-1 dialled node-2; each peer's
    # port and address came from dnsmasq.
    assert mesh == [true, true, true]
    assert mesh_queries > 0, "the peers were found without DNS"

    for {node, i} <- Enum.with_index(trusted) do
      peers = for j <- 0..2, j != i, do: :"node-#{j}@#{@svc}"
      assert Enum.sort(Node.eval(node, "Node.list()")) == peers

      # TLS is the distribution protocol of the node and of each connection:
      # inet_tls_dist records the protocol `tls` in the connection's address,
      # and its connections are driven by a process (the TLS connection),
      # where plain TCP connections are driven by a port.
      assert Node.eval(node, ":init.get_argument(:proto_dist)") == {:ok, [[~c"inet_tls"]]}

      for peer <- peers do
        assert {:ok, {:net_address, {{127, 0, 0, 1}, _}, _, :tls, :inet}} =
                 Node.eval(node, ~s|:net_kernel.node_info(:"#{peer}", :address)|)
      end

      controllers = Node.eval(node, ":erlang.system_info(:dist_ctrl)")
      assert Enum.sort(Keyword.keys(controllers)) == peers
      assert Enum.all?(controllers, fn {_, ctrl} -> is_pid(ctrl) end), inspect(controllers)
    end

    # Each node listens on its own ERL_DIST_PORT.
    for name <- ~w(node-0 node-1 node-2) do
      assert {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, ports[name], [], 1_000)
      :gen_tcp.close(socket)
    end

    # No epmd daemon: each node was told to start none and uses the epmd
    # module, and nothing this test started is an epmd or has a socket on
    # 4369 (an epmd that runs on the machine for other reasons is allowed).
    for node <- trusted do
      assert Node.eval(node, ":init.get_argument(:start_epmd)") == {:ok, [[~c"false"]]}
      assert Node.eval(node, ":net_kernel.epmd_module()") == DynamicSrv.Epmd
    end

    assert NoEpmd.assert_none(NoEpmd.node_marker()) >= length(trusted)
  end

  test "a node whose certificate comes from another CA cannot join, in either direction",
       %{dir: dir, nodes: nodes, trusted: trusted, ports: ports} do
    intruder = nodes["intruder"]

    # It is found through DNS like the others, and its own TLS setup works:
    # its certificate is valid for the cluster's host under its own CA.
    assert Node.eval(
             intruder,
             ~s|DynamicSrv.Epmd.address_please(~c"node-0", ~c"#{@svc}", :inet)|
           ) == {:ok, {127, 0, 0, 1}, ports["node-0"], 5}

    assert {_, 0} = System.cmd("openssl", ~w(verify -CAfile rogue_ca.pem intruder.pem), cd: dir)

    for {node, i} <- Enum.with_index(trusted) do
      assert Node.eval(intruder, ~s|Node.connect(:"node-#{i}@#{@svc}")|) == false
      assert Node.eval(node, ~s|Node.connect(:"intruder@#{@svc}")|) == false
    end

    # Why: the cluster does not know its CA. Its TLS handshake with node-0
    # ends in an unknown_ca alert from node-0; node-0 dialling it rejects
    # its certificate the same way.
    assert {:error, {:tls_alert, {:unknown_ca, _}}} =
             Node.eval(intruder, tls_probe(dir, "intruder", "both_cas.pem", ports["node-0"]))

    assert {:error, {:tls_alert, {:unknown_ca, _}}} =
             Node.eval(hd(trusted), tls_probe(dir, "node-0", "ca.pem", ports["intruder"]))

    assert_outside(nodes["intruder"], :"intruder@#{@svc}", trusted)
  end

  # The name check is the dialler's: the node that accepts a connection
  # checks the caller's certificate against the CA, not its name (OTP's
  # inet_tls_dist), so this node is only ever dialled here.
  test "a certificate of the cluster's CA for another host is refused when that node is dialled",
       %{dir: dir, nodes: nodes, trusted: trusted, ports: ports} do
    for node <- trusted do
      assert Node.eval(node, ~s|Node.connect(:"misnamed@#{@svc}")|) == false
    end

    # Why: its certificate does not name svc.service.consul. The dialler
    # aborts the handshake with a fatal alert either way; only the alert's
    # name changed: ssl 10.8 (OTP 25) sends the generic handshake_failure for
    # a failed hostname check, newer ssl (11.2 in OTP 27.3, 11.7 in OTP 29.1)
    # the more precise bad_certificate (ssl_handshake:path_validation_alert/3).
    assert {:error, {:tls_alert, {alert, message}}} =
             Node.eval(hd(trusted), tls_probe(dir, "node-0", "ca.pem", ports["misnamed"]))

    assert alert in [:handshake_failure, :bad_certificate]
    assert to_string(message) =~ "hostname_check_failed"

    assert_outside(nodes["misnamed"], :"misnamed@#{@svc}", trusted)
  end

  test "a node with plain TCP distribution cannot connect to the TLS nodes, nor they to it",
       %{nodes: nodes, trusted: trusted} do
    plain = nodes["plain"]

    assert Node.eval(plain, ":init.get_argument(:proto_dist)") == :error

    for i <- 0..2 do
      assert Node.eval(plain, ~s|Node.connect(:"node-#{i}@#{@svc}")|) == false
    end

    # The other way round, the plain node waits for the rest of what it
    # takes for a handshake message, until the setup time (7 s) runs out:
    # the three nodes dial it at once.
    dials =
      for node <- trusted,
          do: Task.async(fn -> Node.eval(node, ~s|Node.connect(:"plain@#{@svc}")|) end)

    assert Task.await_many(dials, 20_000) == [false, false, false]

    assert_outside(plain, :"plain@#{@svc}", trusted)
  end

  defp connect_mesh([n0, n1, _n2]) do
    for {node, peer} <- [{n0, "node-1"}, {n0, "node-2"}, {n1, "node-2"}] do
      Node.eval(node, ~s|Node.connect(:"#{peer}@#{@svc}")|)
    end
  end

  # `outsider` is connected to nobody, the trusted nodes still see exactly
  # each other, and every VM still answers.
  defp assert_outside(outsider, outsider_name, trusted) do
    assert Node.eval(outsider, "Node.list([:visible, :hidden])") == []

    for {node, i} <- Enum.with_index(trusted) do
      peers = Node.eval(node, "Node.list([:visible, :hidden])")
      refute outsider_name in peers
      assert Enum.sort(peers) == for(j <- 0..2, j != i, do: :"node-#{j}@#{@svc}")
    end

    for node <- [outsider | trusted] do
      assert Node.eval(node, "1 + 1") == 2
      assert File.exists?("/proc/#{node.os_pid}")
    end
  end

  # Code for a node: one TLS 1.2 handshake, as the distribution's client
  # makes it, to `port` on loopback with the certificate `name`.
  defp tls_probe(dir, name, cacertfile, port) do
    """
    {:ok, _} = Application.ensure_all_started(:ssl)

    :ssl.connect({127, 0, 0, 1}, #{port},
      [certfile: ~c"#{Path.join(dir, name <> ".pem")}",
       keyfile: ~c"#{Path.join(dir, name <> ".key")}",
       cacertfile: ~c"#{Path.join(dir, cacertfile)}",
       verify: :verify_peer,
       server_name_indication: ~c"#{@svc}",
       versions: [:"tlsv1.2"],
       active: false], 5_000)
    """
  end

  # The ssl_dist options file, an Erlang term, for the node `name`.
  defp write_optfile(dir, name, cacertfile) do
    files = """
    {certfile, "#{Path.join(dir, name <> ".pem")}"},
         {keyfile, "#{Path.join(dir, name <> ".key")}"},
         {cacertfile, "#{Path.join(dir, cacertfile)}"},
         {verify, verify_peer}\
    """

    path = Path.join(dir, name <> ".ssl_dist.conf")

    File.write!(path, """
    [{server,
      [#{files},
       {fail_if_no_peer_cert, true}]},
     {client,
      [#{files},
       {customize_hostname_check,
        [{match_fun, public_key:pkix_verify_hostname_match_fun(https)}]}]}].
    """)

    path
  end

  defp read(dir, file), do: File.read!(Path.join(dir, file))
end
