defmodule DynamicSrv.BadConfigTest do
  @moduledoc """
  Every configuration key of the strategy and of the runner (with each
  built-in provider's keys), and every environment variable, given a wrong
  value: each is refused with one message naming the key (or variable) and
  the value, nothing is started, and the caller keeps running. The test
  names list what was tried.
  """
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias DynamicSrv.Env
  alias DynamicSrv.Test.{Recorder, State}

  @svc "my-service.service.consul"

  @strategy_cases [
    {:service, :missing, "the :service key is required"},
    {:service, 42, ":service is 42"},
    {:service, "", ~s(:service is "")},
    {:query, 123, ":query is 123"},
    {:polling_interval, 0, ":polling_interval is 0"},
    {:polling_interval, "5s", ~s(:polling_interval is "5s")},
    {:disconnect_on_deregister, "yes", ~s(:disconnect_on_deregister is "yes")},
    {:resolver, :inet_res, ":resolver is :inet_res"},
    {:nameservers, [], ":nameservers is []"},
    {:nameservers, [{"localhost", 53}], ~s(:nameservers is [{"localhost", 53}])},
    {:nameservers, [{{127, 0, 0, 1}, 70_000}], ":nameservers is [{{127, 0, 0, 1}, 70000}]"},
    {:nameservers, [{{0, 0, 0, 0}, 53}],
     "0.0.0.0:53 is the unspecified address, not a DNS server"},
    {:nameservers, [{{255, 255, 255, 255}, 53}], "255.255.255.255:53 is the broadcast address"},
    {:nameservers, [{{127, 0, 0, 1}, 53}, {{224, 0, 0, 251}, 5353}],
     "224.0.0.251:5353 is a multicast address"},
    {:timeout, -5, ":timeout is -5"},
    {:timeout, "1s", ~s(:timeout is "1s")},
    {:protocol, :sctp, ":protocol is :sctp"},
    {:max_nodes, 0, ":max_nodes is 0"},
    {:max_nodes, :infinity, ":max_nodes is :infinity"}
  ]

  for {key, value, expected} <- @strategy_cases do
    # Built here, when the tests are defined: a `case` on the literal key and
    # value inside the test has clauses that can never match, which Elixir
    # 1.18+'s type checker reports.
    config =
      case {key, value} do
        {:service, :missing} -> [polling_interval: 1_000]
        {:service, value} -> [service: value]
        {key, value} -> [service: @svc] ++ [{key, value}]
      end

    test "strategy refuses #{key}: #{inspect(value)}" do
      rec = Recorder.start(self())
      config = unquote(Macro.escape(config))

      state = struct(State, [topology: :bad, config: config] ++ Recorder.mfas(rec))

      log =
        capture_log(fn -> assert Cluster.Strategy.DynamicSrv.start_link([state]) == :ignore end)

      assert log =~ unquote(expected)
      assert log =~ "topology bad"
      refute_received {:connect, _}
    end
  end

  @runner_cases [
    {[interval: 1], "the :via key is required"},
    {[via: NoSuchModule], ":via is NoSuchModule"},
    {[via: DynamicSrv.Via.Self, interval: 0], ":interval is 0"},
    {[via: DynamicSrv.Via.Self, interval: "10"], ~s(:interval is "10")},
    {[via: DynamicSrv.Via.Self, log_results: "yes"], ~s(:log_results is "yes")},
    {[via: DynamicSrv.Via.Self, serves: 1], ":serves is 1"},
    {[via: DynamicSrv.Via.Self, disconnect_removed: :no], ":disconnect_removed is :no"},
    {[via: DynamicSrv.Via.Self, connect: {:net_kernel}], ":connect is {:net_kernel}"},
    {[via: DynamicSrv.Via.List], "the :node_list key is required"},
    {[via: DynamicSrv.Via.List, node_list: ["no-at-sign"]], ~s(:node_list is ["no-at-sign"])},
    {[via: DynamicSrv.Via.List, node_list: :a@b], ":node_list is :a@b"},
    {[via: DynamicSrv.Via.Dns, dns_name: 42], ":dns_name is 42"},
    {[via: DynamicSrv.Via.Dns, dns_name: "x.test", app_name: "bad name"],
     ~s(:app_name is "bad name")},
    {[via: DynamicSrv.Via.Dns, dns_name: "x.test", app_name: "a", families: [:ipv4]],
     ":families is [:ipv4]"},
    {[via: DynamicSrv.Via.Srv], "the :service key is required"},
    {[via: DynamicSrv.Via.Srv, service: @svc, protocol: :quic], ":protocol is :quic"},
    {[via: DynamicSrv.Via.Udp, port: 70_000], ":port is 70000"},
    {[via: DynamicSrv.Via.Udp, mode: :unicast], ":mode is :unicast"},
    {[via: DynamicSrv.Via.Udp, multicast_addr: "300.1.1.1"], ~s(:multicast_addr is "300.1.1.1")},
    {[via: DynamicSrv.Via.Udp, secret: "short"], ~s(:secret is "short")},
    {[via: DynamicSrv.Via.Udp, max_peers: 0], ":max_peers is 0"},
    {[via: DynamicSrv.Via.Udp, announce_interval: -1], ":announce_interval is -1"},
    {[via: DynamicSrv.Via.List, node_list: {:system, "DSRV_BAD_UNSET"}],
     "DSRV_BAD_UNSET is not set"},
    {[via: DynamicSrv.Via.Self, interval: {:system, "DSRV_BAD_TEXT", 10, &String.to_integer/1}],
     ~s(DSRV_BAD_TEXT="ten" could not be converted)}
  ]

  for {config, expected} <- @runner_cases do
    test "runner refuses #{inspect(config)}" do
      System.put_env("DSRV_BAD_TEXT", "ten")
      on_exit(fn -> System.delete_env("DSRV_BAD_TEXT") end)
      config = unquote(Macro.escape(config))
      log = capture_log(fn -> assert DynamicSrv.Runner.start_link(config) == :ignore end)
      assert log =~ unquote(expected)
      assert Process.whereis(DynamicSrv.Runner) == nil
    end
  end

  for value <- ["", "abc", "0", "65536", "-1", "12.5", "4370x", "0x10f0"] do
    test "ERL_DIST_PORT=#{inspect(value)} is refused with the fix" do
      assert {:error, message} = Env.dist_port(unquote(value))
      assert message =~ "ERL_DIST_PORT=#{inspect(unquote(value))}"
      assert message =~ "1..65535"
    end
  end

  for value <- ["consul", "127.0.0.1:0", "127.0.0.1:65536", "[::1", "1.2.3", ",", "::1]:53"] do
    test "DYNAMIC_SRV_NAMESERVERS=#{inspect(value)} is refused with the fix" do
      assert {:error, message} = Env.read_resolver_defaults(unquote(value), nil)
      assert message =~ "DYNAMIC_SRV_NAMESERVERS=#{inspect(unquote(value))}"
      assert message =~ "ip:port"
    end
  end

  for value <- ["0", "soon", "600001", "1.5", "-3", ""] do
    test "DYNAMIC_SRV_TIMEOUT_MS=#{inspect(value)} is refused with the fix" do
      assert {:error, message} = Env.read_resolver_defaults(nil, unquote(value))
      assert message =~ "DYNAMIC_SRV_TIMEOUT_MS=#{inspect(unquote(value))}"
    end
  end
end
