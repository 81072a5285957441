defmodule DynamicSrv.Via.DnsTest do
  @moduledoc """
  The A/AAAA provider and the distribution's address family: Peerage's own
  example (`dns_name: "localhost"`, `app_name: "myapp"`) against this
  machine's resolver, records from a real dnsmasq, and real nodes.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, Recorder, RunnerSupport, Wait}
  alias DynamicSrv.Via.Dns

  @moduletag :dnsmasq
  @moduletag timeout: 120_000
  setup do
    on_exit(RunnerSupport.env_restorer())
  end

  test "by default only the family of this node's distribution is asked; both on request" do
    records = [
      {:a, "peers.svc.test", {127, 0, 0, 1}},
      {:a, "peers.svc.test", {127, 0, 0, 2}},
      {:aaaa, "peers.svc.test", {0xFD00, 0, 0, 0, 0, 0, 0, 7}}
    ]

    dns = DnsServer.start(records)
    on_exit(fn -> DnsServer.stop(dns) end)
    base = [via: Dns, dns_name: "peers.svc.test", app_name: "app"]
    base = base ++ [nameservers: DnsServer.nameservers(dns), timeout: 1_000]

    # This VM runs no -proto_dist: IPv4.
    assert Dns.dist_family() == :inet
    assert {:ok, %{families: :auto} = config} = DynamicSrv.Runner.prepare(base)
    assert {:ok, nodes} = Dns.poll(config)
    assert Enum.sort(nodes) == [:"app@127.0.0.1", :"app@127.0.0.2"]

    assert {:ok, config} = DynamicSrv.Runner.prepare(base ++ [families: [:inet, :inet6]])
    assert {:ok, nodes} = Dns.poll(config)
    assert Enum.sort(nodes) == [:"app@127.0.0.1", :"app@127.0.0.2", :"app@fd00::7"]
  end

  test "Peerage's defaults: dns_name localhost, app_name nonode" do
    assert {:ok, %{dns_name: "localhost", app_name: "nonode"}} =
             DynamicSrv.Runner.prepare(via: Dns)
  end

  test "Peerage's example (localhost, myapp) never dials myapp@::1" do
    recorder = Recorder.start(self())

    assert {:ok, runner} =
             RunnerSupport.start(
               [via: Dns, dns_name: "localhost", app_name: "myapp", interval: 1] ++
                 Recorder.mfas(recorder)
             )

    on_exit(fn -> RunnerSupport.stop(runner) end)

    assert_receive {:connect, :"myapp@127.0.0.1"}, 3_000
    # Three more polls.
    refute_receive {:connect, _}, 3_500
  end

  test "the distribution's family comes from -proto_dist" do
    v6 = Node.start(nil, erl: "-proto_dist inet6_tcp")
    v4 = Node.start(nil)
    on_exit(fn -> Enum.each([v6, v4], &Node.stop/1) end)

    assert Node.eval(v6, "DynamicSrv.Via.Dns.dist_family()") == :inet6
    assert Node.eval(v4, "DynamicSrv.Via.Dns.dist_family()") == :inet
  end

  test "on a real node named myapp@127.0.0.1, Peerage's example polls without an error" do
    node = Node.start("myapp@127.0.0.1", dist_port: DnsServer.free_port())
    on_exit(fn -> Node.stop(node) end)
    log = Path.join(System.tmp_dir!(), "dsrv-dns-#{System.unique_integer([:positive])}.log")
    on_exit(fn -> File.rm(log) end)

    # Polls are counted by the VM (call_count on the provider's poll/1).
    code = """
    :ok = :logger.add_handler(:dsrv_test_file, :logger_std_h,
      %{level: :info, config: %{file: #{inspect(String.to_charlist(log))}}})
    {:module, _} = Code.ensure_loaded(DynamicSrv.Via.Dns)
    1 = :erlang.trace_pattern({DynamicSrv.Via.Dns, :poll, 1}, true, [:call_count])
    {:ok, pid} = DynamicSrv.Runner.start_link(
      via: DynamicSrv.Via.Dns, dns_name: "localhost", app_name: "myapp", interval: 1)
    Process.unlink(pid)
    :started
    """

    assert Node.eval(node, code) == :started

    polls = fn ->
      {:call_count, count} =
        Node.eval(node, ":erlang.trace_info({DynamicSrv.Via.Dns, :poll, 1}, :call_count)")

      count
    end

    assert {:ok, _} = Wait.until(fn -> polls.() >= 4 end, 10_000)
    assert Node.eval(node, "Node.list()") == []

    poll = """
    {:ok, config} = DynamicSrv.Runner.prepare(
      via: DynamicSrv.Via.Dns, dns_name: "localhost", app_name: "myapp", interval: 1)
    DynamicSrv.Via.Dns.poll(config)
    """

    assert Node.eval(node, poll) == {:ok, [:"myapp@127.0.0.1"]}

    text = File.read!(log)
    refute text =~ "unable to connect", text
    refute text =~ "failed", text
  end
end
