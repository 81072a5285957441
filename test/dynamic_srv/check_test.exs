defmodule DynamicSrv.CheckTest do
  @moduledoc "The diagnostic command against a real dnsmasq, healthy and broken."
  use ExUnit.Case, async: false

  @moduletag :dnsmasq

  alias DynamicSrv.Check
  alias DynamicSrv.Test.{DnsServer, HostileDns, Netns, Node}

  @svc "svc.service.consul"

  setup do
    {:ok, listener} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, open} = :inet.port(listener)
    closed = DnsServer.free_port()

    records = [
      {:srv, @svc, "node-0.#{@svc}", open},
      {:a, "node-0.#{@svc}", {127, 0, 0, 1}},
      {:srv, @svc, "node-1.#{@svc}", closed},
      {:a, "node-1.#{@svc}", {127, 0, 0, 1}},
      {:aaaa, "node-1.#{@svc}", {0, 0, 0, 0, 0, 0, 0, 1}},
      {:srv, @svc, "junk.other.consul", 9}
    ]

    big = for i <- 1..150, do: {:srv, "big.#{@svc}", "n#{i}.#{@svc}", 10_000 + i}
    dns = DnsServer.start(records ++ big)
    previous = System.get_env("ERL_DIST_PORT")
    System.put_env("ERL_DIST_PORT", to_string(open))

    on_exit(fn ->
      DnsServer.stop(dns)
      :gen_tcp.close(listener)

      if previous,
        do: System.put_env("ERL_DIST_PORT", previous),
        else: System.delete_env("ERL_DIST_PORT")
    end)

    %{ns: DnsServer.nameservers(dns), open: open, closed: closed}
  end

  defp run(service, opts),
    do: Check.run(service, opts) |> then(fn {s, r} -> {s, IO.iodata_to_binary(r)} end)

  test "a healthy service: aligned table, node names, addresses, port checks, verdict", %{
    ns: ns,
    open: open
  } do
    {status, report} = run(@svc, nameservers: ns, node: "node-0@#{@svc}")
    assert status == :ok
    assert report =~ "nameservers   127.0.0.1:"
    assert report =~ "3 record(s), over UDP ("

    assert report =~
             ~r/node-0\.svc\.service\.consul\s+node-0@svc\.service\.consul\s+127\.0\.0\.1\s+open/

    assert report =~ ~r/node-1@svc\.service\.consul\s+127\.0\.0\.1 ::1\s+closed \(econnrefused\)/
    assert report =~ "junk.other.consul: the target is not <label>.svc.service.consul"
    assert report =~ "verdict       listed with port #{open}: peers will find this node"

    # Columns line up: every row of the table starts its target column at the same place.
    table =
      report
      |> String.split("\n")
      |> Enum.filter(&(String.starts_with?(&1, "  ") and not String.contains?(&1, ": ")))

    assert length(table) == 4
    columns = for line <- table, do: :binary.match(line, ["target", "node-", "junk"]) |> elem(0)
    assert length(Enum.uniq(columns)) == 1
  end

  test "nothing is printed for nothing: no ignored section when every target is valid", %{ns: ns} do
    {_, report} = run(@svc, nameservers: ns, query: "big.#{@svc}")
    refute report =~ "ignored targets"
    refute report =~ "(ignored)"
  end

  test "a local node missing from the answer, or listed with another port, fails", %{
    ns: ns,
    closed: closed
  } do
    assert {:error, report} = run(@svc, nameservers: ns, node: "node-7@#{@svc}")
    assert report =~ "peers cannot find this node: no SRV target gives node-7@#{@svc}"

    assert {:error, report} = run(@svc, nameservers: ns, node: "node-1@#{@svc}")
    assert report =~ "listed with port #{closed}, but ERL_DIST_PORT is"
  end

  test "NXDOMAIN and a server that never answers fail with the reason", %{ns: ns} do
    assert {:error, report} = run("nope.service.consul", nameservers: ns)
    assert report =~ "FAILED: the name does not exist (NXDOMAIN)"

    silent = HostileDns.start(fn _ -> [] end)

    try do
      assert {:error, report} =
               run(@svc, nameservers: HostileDns.nameservers(silent), timeout: 300)

      assert report =~ "FAILED: no answer before the deadline"
    after
      HostileDns.stop(silent)
    end
  end

  test "an answer too big for UDP is reported as truncated and fetched whole over TCP", %{ns: ns} do
    {status, report} = run("big.#{@svc}", nameservers: ns)
    assert status == :ok
    assert report =~ "150 record(s), over TCP (the UDP answer"
    assert report =~ ~r/was truncated: \d+ record\(s\) over UDP, 150 over TCP\)/
  end

  test "the mix task: options, and exit status 1 when the node would not be found", %{ns: ns} do
    [{ip, port}] = ns
    server = "#{:inet.ntoa(ip)}:#{port}"

    output =
      ExUnit.CaptureIO.capture_io(fn ->
        assert catch_exit(
                 Mix.Tasks.DynamicSrv.Check.run([
                   @svc,
                   "--nameserver",
                   server,
                   "--node",
                   "ghost@#{@svc}"
                 ])
               ) ==
                 {:shutdown, 1}
      end)

    assert output =~ "no SRV target gives ghost@#{@svc}"

    output =
      ExUnit.CaptureIO.capture_io(fn ->
        assert Mix.Tasks.DynamicSrv.Check.run([@svc, "--nameserver", server, "--tcp"]) == :ok
      end)

    assert output =~ "over TCP (--tcp)"

    assert {:error, message} = Check.parse_args([@svc, "--nameserver", "nope"])
    assert message =~ "--nameserver nope"
    assert {:error, _} = Check.parse_args([])
    assert {:error, _} = Check.parse_args([@svc, "--bogus"])
  end

  @tag :netns
  test "a first nameserver that cannot be reached is one line of the report and exit status 1" do
    # A host in a namespace with no route but its own /24: sending to
    # 192.0.2.99 fails at once with :enetunreach. The lookup itself gets its
    # answer from the second server.
    net = Netns.setup(1)
    [host] = net.hosts
    dns = DnsServer.start([{:srv, @svc, "node-0.#{@svc}", 4000}], listen: net.gateway)
    node = Node.start(nil, netns: host.ns)

    on_exit(fn ->
      Node.stop(node)
      DnsServer.stop(dns)
      Netns.teardown(net)
    end)

    argv = [
      @svc,
      "--nameserver",
      "192.0.2.99:53",
      "--nameserver",
      DnsServer.env_value(dns),
      "--timeout",
      "2000"
    ]

    code = """
    {:ok, io} = StringIO.open("")
    leader = Process.group_leader()
    Process.group_leader(self(), io)
    status = DynamicSrv.Check.main(#{inspect(argv)})
    Process.group_leader(self(), leader)
    {:ok, {_, output}} = StringIO.close(io)
    {status, output}
    """

    assert {1, output} = Node.eval(node, code)
    assert output =~ "answer        1 record(s)\n"
    failed = output |> String.split("\n") |> Enum.filter(&(&1 =~ "FAILED"))

    assert [line] = failed
    assert line =~ ~r/^transport\s+FAILED: .*192\.0\.2\.99:53: Network is unreachable/
  end
end
