defmodule DynamicSrv.RunnerTest do
  @moduledoc """
  The standalone runner with each polling provider, in this VM: connects
  and disconnects go to a recorder, the DNS providers ask a real dnsmasq.
  """
  use ExUnit.Case, async: false

  @moduletag :dnsmasq
  import ExUnit.CaptureLog

  alias DynamicSrv.Test.{DnsServer, Recorder, RunnerSupport}

  @app :libcluster_dynamic_srv
  # The runner polls when it starts: its first connects come at once on an
  # idle machine, and within a scheduler's share of a loaded one (ExUnit's
  # 100 ms default is too short for that).
  @first_poll 2_000

  defmodule Custom do
    @moduledoc "A custom provider that is a process (serves: true)."
    use Agent
    @behaviour DynamicSrv.Provider

    def start_link(config) do
      Agent.start_link(fn -> Keyword.fetch!(config, :custom_nodes) end, name: __MODULE__)
    end

    @impl true
    def poll, do: Agent.get(__MODULE__, & &1)
  end

  defmodule Ordered do
    @moduledoc """
    A provider process that reports, as it stops, whether the engine is
    still registered: exits of two processes reach a third in no set order,
    so the order is observed where it matters, in the provider.
    """
    use GenServer
    @behaviour DynamicSrv.Provider

    def start_link(config),
      do: GenServer.start_link(__MODULE__, Map.new(config), name: __MODULE__)

    @impl GenServer
    def init(config) do
      Process.flag(:trap_exit, true)
      {:ok, config}
    end

    @impl GenServer
    def terminate(reason, config),
      do:
        send(
          config.report_to,
          {:provider_stops, reason, Process.whereis(DynamicSrv.Runner.Membership)}
        )

    @impl DynamicSrv.Provider
    def poll(config), do: config.custom_nodes
  end

  defmodule PeerageStyle do
    @moduledoc "A provider process as Peerage writes them: `use GenServer` and only start_link/0."
    use GenServer

    def start_link, do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

    @impl true
    def init(:ok), do: {:ok, [:p1@h]}

    @impl true
    def handle_call(:poll, _from, nodes), do: {:reply, nodes, nodes}

    def poll, do: GenServer.call(__MODULE__, :poll)
  end

  defmodule PlainStartLink0 do
    @moduledoc "A provider process with start_link/0 and no child_spec/1."
    def start_link, do: Agent.start_link(fn -> [:p2@h] end, name: __MODULE__)
    def poll, do: Agent.get(__MODULE__, & &1)
  end

  defmodule SlowStart do
    @moduledoc "A provider process that works a while (e.g. connects) before it registers its name."
    def start_link(_config) do
      Process.sleep(300)
      Agent.start_link(fn -> [:s1@h] end, name: __MODULE__)
    end

    def poll, do: Agent.get(__MODULE__, & &1)
  end

  defmodule NotAProcess do
    @moduledoc "A provider configured with serves: true that has no start function."
    def poll, do: [:n@h]
  end

  defmodule Flaky do
    @moduledoc """
    A provider process whose start raises while `:flaky_failures` (in the
    application environment) is above zero, and reports each attempt.
    """
    def start_link(config) do
      send(Keyword.fetch!(config, :test_pid), {:attempt, System.monotonic_time(:millisecond)})
      left = Application.get_env(:libcluster_dynamic_srv, :flaky_failures, 0)

      if left > 0 do
        Application.put_env(:libcluster_dynamic_srv, :flaky_failures, left - 1)
        raise "the inventory API is down"
      end

      Agent.start_link(fn -> [:f1@h] end, name: __MODULE__)
    end

    def poll, do: Agent.get(__MODULE__, & &1)
  end

  setup do
    on_exit(RunnerSupport.env_restorer())
    on_exit(fn -> System.delete_env("DSRV_T_NODES") end)
    %{recorder: Recorder.start(self())}
  end

  defp start_runner(config, recorder) do
    assert {:ok, pid} = RunnerSupport.start(config ++ Recorder.mfas(recorder))
    on_exit(fn -> RunnerSupport.stop(pid) end)
    pid
  end

  test "Self lists only the local node, which is never connected", %{recorder: rec} do
    assert DynamicSrv.Provider.poll(DynamicSrv.Via.Self, %{}) == {:ok, [node()]}
    start_runner([via: DynamicSrv.Via.Self, interval: 1], rec)
    refute_receive {:connect, _}, 300
    assert DynamicSrv.Membership.members(DynamicSrv.Runner.Membership) == []
  end

  test "List connects its nodes; a node taken off the list (configure/1) is disconnected", %{
    recorder: rec
  } do
    start_runner([via: DynamicSrv.Via.List, interval: 1, node_list: [:a@h1, "b@h2"]], rec)
    assert_receive {:connect, :a@h1}, @first_poll
    assert_receive {:connect, :b@h2}, @first_poll

    assert {:error, message} = DynamicSrv.Runner.configure(node_list: ["no-at"])
    assert message =~ ":node_list is"
    assert {:error, message} = DynamicSrv.Runner.configure(interval: 5)
    assert message =~ "restart"
    refute_receive {:disconnect, _}, 1_500

    assert {:ok, %{node_list: [:a@h1]}} = DynamicSrv.Runner.configure(node_list: [:a@h1])
    assert_receive {:disconnect, :b@h2}, 3_000
    refute_received {:disconnect, :a@h1}
  end

  # The test VM's node() is :nonode@nohost: the SRV target nonode.nohost
  # of the service "nohost" names it.
  test "with Srv, a node the answers listed and then left out twice fences itself", %{
    recorder: rec
  } do
    {:ok, answer} = Agent.start_link(fn -> [~c"nonode.nohost", ~c"a.nohost"] end)
    resolver = fn _query -> for t <- Agent.get(answer, & &1), do: {0, 1, 4000, t} end

    log =
      capture_log(fn ->
        start_runner(
          [via: DynamicSrv.Via.Srv, interval: 1, service: "nohost", resolver: resolver],
          rec
        )

        assert_receive {:connect, :a@nohost}, 2_000
        Agent.update(answer, fn _ -> [~c"a.nohost"] end)
        assert_receive {:disconnect, :a@nohost}, 4_000
        refute_receive {:connect, _}, 1_500
      end)

    assert log =~ "fencing nonode@nohost"
  end

  test "with List, a list that leaves out the local node fences nothing", %{recorder: rec} do
    start_runner([via: DynamicSrv.Via.List, interval: 1, node_list: [node(), :b@h2]], rec)
    assert_receive {:connect, :b@h2}
    assert {:ok, _} = DynamicSrv.Runner.configure(node_list: [:b@h2])
    refute_receive {:disconnect, _}, 3_000
    # b is still dialled.
    Recorder.drop(rec, :b@h2)
    assert_receive {:connect, :b@h2}, 2_000
  end

  test "deferred values are resolved when the runner starts", %{recorder: rec} do
    System.put_env("DSRV_T_NODES", "x@h1,y@h2")

    start_runner(
      [
        via: DynamicSrv.Via.List,
        interval: {:system, "DSRV_T_INTERVAL_UNSET", 1, &String.to_integer/1},
        node_list: {:system, "DSRV_T_NODES", [], &String.split(&1, ",")}
      ],
      rec
    )

    assert_receive {:connect, :x@h1}, @first_poll
    assert_receive {:connect, :y@h2}, @first_poll
    assert Application.get_env(@app, :node_list) == [:x@h1, :y@h2]
  end

  test "Peerage's sync_offset is accepted, named once as having no effect", %{recorder: rec} do
    log =
      capture_log(fn ->
        start_runner(
          [via: DynamicSrv.Via.List, interval: 1, node_list: [:x@h1], sync_offset: 3],
          rec
        )

        assert_receive {:connect, :x@h1}, @first_poll
        refute_receive {:connect, _}, 1_500
      end)

    assert length(String.split(log, ":sync_offset is Peerage's and has no effect")) == 2
  end

  test "a bad or missing value stops the runner with one message; nothing else stops" do
    cases = [
      {[interval: 1], ":via key is required"},
      {[via: DynamicSrv.Via.List], ":node_list key is required"},
      {[via: DynamicSrv.Via.List, node_list: ["not a node"]], ~s(:node_list is ["not a node"])},
      {[via: DynamicSrv.Via.List, node_list: [], interval: 0], ":interval is 0"},
      {[via: NoSuchModule], ":via is NoSuchModule, expected the name of a loaded module"},
      {[via: DynamicSrv.Via.Dns, dns_name: "x.test", app_name: "bad name"], ":app_name is"},
      {[via: DynamicSrv.Via.List, node_list: {:system, "DSRV_T_UNSET"}],
       "DSRV_T_UNSET is not set"}
    ]

    for {config, expected} <- cases do
      log = capture_log(fn -> assert DynamicSrv.Runner.start_link(config) == :ignore end)
      assert log =~ expected, "#{inspect(config)} logged #{log}"
      assert length(String.split(String.trim(log), "\n")) <= 3
    end
  end

  test "a custom provider with serves: true is started, supervised and polled", %{recorder: rec} do
    start_runner(
      [via: Custom, serves: true, interval: 1, custom_nodes: [:c1@h, :c2@h]],
      rec
    )

    assert_receive {:connect, :c1@h}, @first_poll
    assert_receive {:connect, :c2@h}, @first_poll

    first = Process.whereis(Custom)
    Process.exit(first, :kill)

    assert {:ok, second} =
             DynamicSrv.Test.Wait.until(
               fn -> (pid = Process.whereis(Custom)) != first && pid end,
               2_000
             )

    assert is_pid(second)
  end

  test "a serves: true provider with only start_link/0 (Peerage's convention) starts",
       %{recorder: rec} do
    runner = start_runner([via: PeerageStyle, serves: true, interval: 1], rec)
    assert_receive {:connect, :p1@h}, 2_000
    assert is_pid(Process.whereis(PeerageStyle))
    RunnerSupport.stop(runner)
    assert Process.whereis(PeerageStyle) == nil

    start_runner([via: PlainStartLink0, serves: true, interval: 1], rec)
    assert_receive {:connect, :p2@h}, 2_000
  end

  test "the first poll waits for the provider process's first start", %{recorder: rec} do
    log =
      capture_log(fn ->
        start_runner([via: SlowStart, serves: true, interval: 1], rec)
        assert_receive {:connect, :s1@h}, 2_000
      end)

    refute log =~ "membership source failed", log
  end

  test "an engine or provider that dies is restarted; the runner and its parent stay up",
       %{recorder: rec} do
    log =
      capture_log(fn ->
        runner =
          start_runner([via: Custom, serves: true, interval: 1, custom_nodes: [:c1@h]], rec)

        assert_receive {:connect, :c1@h}, @first_poll

        for name <- [DynamicSrv.Runner.Membership, Custom] do
          old = Process.whereis(name)
          ref = Process.monitor(old)
          Process.exit(old, :kill)
          assert_receive {:DOWN, ^ref, _, _, :killed}

          assert {:ok, new} =
                   DynamicSrv.Test.Wait.until(
                     fn ->
                       pid = Process.whereis(name)
                       pid != old and pid
                     end,
                     5_000
                   )

          assert new in elem(Process.info(runner, :links), 1)
        end

        assert Process.alive?(runner)
        assert GenServer.call(runner, :which_children) == {:error, :unknown_call}
        # The new engine polls the new provider.
        Recorder.drop(rec, :c1@h)
        assert_receive {:connect, :c1@h}, 5_000
      end)

    assert log =~ "DynamicSrv.Membership exited (:killed); restarting it in 1 s"
    assert log =~ "DynamicSrv.RunnerTest.Custom exited (:killed); restarting it in 1 s"
  end

  test "stopped by its parent, it stops the engine, then the provider", %{recorder: rec} do
    Process.flag(:trap_exit, true)
    config = [via: Ordered, serves: true, interval: 1, custom_nodes: [:c1@h], report_to: self()]
    {:ok, runner} = DynamicSrv.Runner.start_link(config ++ Recorder.mfas(rec))
    assert_receive {:connect, :c1@h}, @first_poll
    # The children the runner keeps, monitored first: a child that exits
    # before the stop then shows its own exit reason below, not :noproc.
    kept = :sys.get_state(runner)
    children = [kept.engine.pid, kept.provider.pid]
    refs = for pid <- children, do: Process.monitor(pid)
    # Each started once and holding its name: a restart doubles a child's
    # delay, and a name still held by an earlier test's process shows here.
    names = for name <- [DynamicSrv.Runner.Membership, Ordered], do: Process.whereis(name)
    assert names == children, inspect({names, kept})
    assert kept.provider.delay == 1_000 and kept.engine.delay == 1_000, inspect(kept)

    Process.exit(runner, :shutdown)
    assert_receive {:EXIT, ^runner, :shutdown}, 15_000

    # The engine first (gone when the provider is asked to stop), then the
    # provider; both with :shutdown, as a supervisor stops its children.
    assert_receive {:provider_stops, :shutdown, nil}, 5_000

    for ref <- refs do
      assert_receive {:DOWN, ^ref, _, _, reason}, 5_000
      assert reason == :shutdown, inspect({reason, kept})
    end

    assert Process.whereis(DynamicSrv.Runner) == nil
  end

  test "the start of a provider process: its child_spec, start_link/1, else start_link/0" do
    alias DynamicSrv.Runner.Child
    assert Child.start_mfa(PeerageStyle, x: 1) == {:ok, {PeerageStyle, :start_link, []}}
    assert Child.start_mfa(PlainStartLink0, x: 1) == {:ok, {PlainStartLink0, :start_link, []}}
    assert Child.start_mfa(Custom, x: 1) == {:ok, {Custom, :start_link, [[x: 1]]}}
    assert Child.start_mfa(NotAProcess, x: 1) == {:error, :no_start}
  end

  test "retries wait 1 s, doubling, at most 30 s" do
    delays = Stream.iterate(1_000, &DynamicSrv.Runner.Child.next_delay/1) |> Enum.take(7)
    assert delays == [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]
  end

  test "a provider without a start function: the runner runs, one message with the fix",
       %{recorder: rec} do
    log =
      capture_log(fn ->
        pid = start_runner([via: NotAProcess, serves: true, interval: 1], rec)
        failures = fn -> RunnerSupport.provider_failures(pid) end
        # Three starts (at 0, 1 and 3 s) fail.
        assert {:ok, _} = DynamicSrv.Test.Wait.until(fn -> failures.() >= 3 end, 6_000)
        assert Process.alive?(pid)
        assert_receive {:connect, :n@h}, @first_poll
      end)

    assert [_one] = Regex.scan(~r/NotAProcess cannot start/, log), log
    assert log =~ "needs child_spec/1, start_link/1 or start_link/0"
    assert log =~ "set serves: false"
  end

  test "a start that raises is logged once and retried with a growing delay until it works",
       %{recorder: rec} do
    Application.put_env(@app, :flaky_failures, 3)

    log =
      capture_log(fn ->
        start_runner([via: Flaky, serves: true, interval: 1, test_pid: self()], rec)
        times = for _ <- 1..4, do: receive(do: ({:attempt, t} -> t), after: (10_000 -> nil))
        assert Enum.all?(times), "only #{Enum.count(times, & &1)} attempts"

        [d1, d2, d3] =
          times |> Enum.chunk_every(2, 1, :discard) |> Enum.map(fn [a, b] -> b - a end)

        # Lower bounds only: a loaded machine makes the gaps longer, never
        # shorter, than the backoff (1 s, 2 s, 4 s).
        assert d1 >= 950 and d2 >= 1_950 and d3 >= 3_950, inspect({d1, d2, d3})

        assert_receive {:connect, :f1@h}, 10_000
      end)

    assert [_one] = Regex.scan(~r/Flaky raised while starting/, log), log
    assert log =~ "the inventory API is down"
    assert log =~ "retrying in 1 s"
    assert log =~ "started after 3 failed attempt(s)"
  end

  describe "DNS providers against a real dnsmasq" do
    setup do
      records = [
        {:a, "peers.svc.test", {127, 0, 0, 1}},
        {:a, "peers.svc.test", {127, 0, 0, 2}},
        {:aaaa, "peers.svc.test", {0xFD00, 0, 0, 0, 0, 0, 0, 7}},
        {:srv, "app.svc.test", "n1.app.svc.test", 4001},
        {:srv, "app.svc.test", "n2.app.svc.test", 4002},
        {:srv, "app.svc.test", "junk!.elsewhere.test", 4003}
      ]

      dns = DnsServer.start(records)
      on_exit(fn -> DnsServer.stop(dns) end)
      %{dns: dns, records: records}
    end

    test "Dns: A and AAAA records become app@ip; NXDOMAIN keeps the membership", %{
      recorder: rec,
      dns: dns,
      records: records
    } do
      config = [
        via: DynamicSrv.Via.Dns,
        interval: 1,
        dns_name: "peers.svc.test",
        app_name: "app",
        families: [:inet, :inet6],
        nameservers: DnsServer.nameservers(dns),
        timeout: 500
      ]

      start_runner(config, rec)
      {:ok, validated} = DynamicSrv.Runner.prepare(config)

      for node <- [:"app@127.0.0.1", :"app@127.0.0.2", :"app@fd00::7"],
          do: assert_receive({:connect, ^node}, 2_000)

      _dns = DnsServer.set_records(dns, Enum.reject(records, &(elem(&1, 1) == "peers.svc.test")))
      assert {:error, :nxdomain} = DynamicSrv.Via.Dns.poll(validated)
      refute_receive {:disconnect, _}, 3_500
      assert length(DynamicSrv.Membership.members(DynamicSrv.Runner.Membership)) == 3
    end

    test "Srv: the strategy's SRV rules through the same engine", %{recorder: rec, dns: dns} do
      start_runner(
        [
          via: DynamicSrv.Via.Srv,
          interval: 1,
          service: "app.svc.test",
          nameservers: DnsServer.nameservers(dns)
        ],
        rec
      )

      assert_receive {:connect, :"n1@app.svc.test"}, 2_000
      assert_receive {:connect, :"n2@app.svc.test"}, 2_000
      refute_receive {:connect, _}, 300
    end
  end
end
