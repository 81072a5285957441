defmodule DynamicSrv.MembershipTest do
  @moduledoc """
  The engine's rules, in one VM: the recorder stands in for `:net_kernel`
  and a function for the provider. Nothing here touches what the VM shares,
  so it runs with the other async tests.
  """
  use ExUnit.Case, async: true
  import ExUnit.CaptureLog

  alias DynamicSrv.Membership
  alias DynamicSrv.Test.Recorder

  # A killed process's monitor message, which a loaded machine can delay
  # past ExUnit's 100 ms default.
  @exit_wait 1_000

  defp start(poll, opts \\ []) do
    rec = Recorder.start(self())
    opts = [poll: poll, interval: 50, log_results: false] ++ Recorder.mfas(rec) ++ opts
    {:ok, pid} = Membership.start_link(opts)
    on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
    pid
  end

  test "never connects the local node" do
    start(fn -> {:ok, [node(), :other@host]} end)
    assert_receive {:connect, :other@host}, 5_000
    refute_receive {:connect, _}, 200
  end

  test "a crashing provider changes nothing and the engine stays up" do
    parent = self()
    {:ok, flag} = Agent.start_link(fn -> :ok end)

    poll = fn ->
      send(parent, :polled)
      if Agent.get(flag, & &1) == :ok, do: {:ok, [:a@host]}, else: raise("provider bug")
    end

    log =
      capture_log(fn ->
        pid = start(poll)
        assert_receive {:connect, :a@host}, 5_000
        Agent.update(flag, fn _ -> :crash end)
        for _ <- 1..4, do: assert_receive(:polled, 1_000)
        refute_received {:disconnect, _}
        assert Process.alive?(pid)
        assert Membership.members(pid) == [:a@host]
      end)

    assert log =~ "provider_crashed"
  end

  test "while the source fails, listed members are redialled but a node it already left out is not" do
    parent = self()
    rec = Recorder.start(parent)
    answers = [{:ok, [:a@host, :b@host]}, {:ok, [:a@host]}]
    {:ok, script} = Agent.start_link(fn -> answers end)

    poll = fn ->
      send(parent, :polled)

      case Agent.get_and_update(script, fn
             [] -> {nil, []}
             [next | rest] -> {next, rest}
           end) do
        # The answer that leaves b out; b's connection then drops on its own
        # (as global does when a peer disconnects it).
        {:ok, [:a@host]} = answer ->
          Recorder.drop(rec, :b@host)
          answer

        nil ->
          {:error, :timeout}

        answer ->
          answer
      end
    end

    opts = [poll: poll, interval: 50, log_results: false] ++ Recorder.mfas(rec)

    capture_log(fn ->
      {:ok, pid} = Membership.start_link(opts)
      assert_receive {:connect, :a@host}, 5_000
      assert_receive {:connect, :b@host}, 5_000
      for _ <- 1..3, do: assert_receive(:polled, 1_000)
      # The source now fails: a, dropped as well, is dialled again; b is not.
      Recorder.drop(rec, :a@host)
      assert_receive {:connect, :a@host}, 1_000
      for _ <- 1..3, do: assert_receive(:polled, 1_000)
      refute_received {:connect, :b@host}
      refute_received {:disconnect, _}
      Process.unlink(pid)
      Process.exit(pid, :kill)
    end)
  end

  test "a provider that hangs is cut off after poll_timeout" do
    parent = self()

    poll = fn ->
      send(parent, :polled)
      Process.sleep(:infinity)
    end

    capture_log(fn ->
      pid = start(poll, poll_timeout: 100)
      for _ <- 1..3, do: assert_receive(:polled, 1_000)
      assert Process.alive?(pid)
    end)
  end

  test "a peer whose connect hangs does not stall the loop" do
    parent = self()

    poll = fn ->
      send(parent, :polled)
      {:ok, [:slow@host, :fast@host]}
    end

    {:ok, pid} =
      Membership.start_link(
        poll: poll,
        interval: 50,
        connect_timeout: 100,
        log_results: false,
        connect: {__MODULE__, :connect, [parent]},
        list_nodes: {:erlang, :nodes, [:connected]}
      )

    for _ <- 1..3, do: assert_receive({:connected, :fast@host}, 1_000)
    # Unlinked first: the kill would otherwise reach this test process through
    # the link and kill it too (ExUnit 1.15+ reports that as a failure).
    Process.unlink(pid)
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}, @exit_wait
  end

  def connect(_parent, :slow@host), do: Process.sleep(:infinity)

  def connect(parent, node) do
    send(parent, {:connected, node})
    true
  end

  describe "fencing (the local node left the answer)" do
    # The test VM is not distributed: node() is :nonode@nohost, which the
    # answers below list or leave out as a real answer would list the node.
    # The provider returns the answers queued, one per poll, and repeats
    # the last one; `set` queues one answer, `queue` several.
    defp fenced_engine(answer) do
      parent = self()
      rec = Recorder.start(parent)
      {:ok, agent} = Agent.start_link(fn -> [answer] end)

      poll = fn ->
        answer =
          Agent.get_and_update(agent, fn
            [last] -> {last, [last]}
            [next | rest] -> {next, rest}
          end)

        send(parent, {:polled, answer})
        answer
      end

      opts = [poll: poll, interval: 50, log_results: false, fence: true] ++ Recorder.mfas(rec)
      {:ok, pid} = Membership.start_link(opts)
      on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
      queue = fn answers -> Agent.update(agent, fn _ -> answers end) end
      %{pid: pid, rec: rec, set: &queue.([&1]), queue: queue}
    end

    # Waits until `n` polls have returned `answer`.
    defp polls(answer, n), do: for(_ <- 1..n, do: assert_receive({:polled, ^answer}, 2_000))

    # Makes the provider return `answer` and waits until `n` polls have.
    defp serve(e, answer, n) do
      e.set.(answer)
      polls(answer, n)
    end

    # An engine whose answers list this node and a@host, connected.
    defp listed_engine do
      e = fenced_engine({:ok, [node(), :a@host]})
      assert_receive {:connect, :a@host}, 2_000
      e
    end

    defp flush do
      receive do
        _ -> flush()
      after
        0 -> :ok
      end
    end

    test "a node never listed yet dials as usual; once listed, two misses fence it" do
      log =
        capture_log(fn ->
          e = fenced_engine({:ok, [:a@host]})
          assert_receive {:connect, :a@host}, 2_000
          # Booting before its own registration shows up: every poll without
          # it still connects (and reconnects) the listed nodes.
          for _ <- 1..3 do
            Recorder.drop(e.rec, :a@host)
            assert_receive {:connect, :a@host}, 2_000
          end

          refute_received {:disconnect, _}
          assert Membership.members(e.pid) == [:a@host]

          serve(e, {:ok, [node(), :a@host]}, 1)
          e.set.({:ok, [:a@host]})
          assert_receive {:disconnect, :a@host}, 2_000
          # The poll that disconnects logs the fence after it: a call to the
          # engine returns once that poll is over.
          Membership.members(e.pid)
        end)

      assert log =~ "fencing"
    end

    test "listed, then left out of two successful answers in a row: disconnects and dials nobody" do
      log =
        capture_log(fn ->
          e = fenced_engine({:ok, [node(), :a@host, :b@host]})
          assert_receive {:connect, :a@host}, 2_000
          assert_receive {:connect, :b@host}, 2_000

          e.set.({:ok, [:a@host, :b@host]})
          assert_receive {:disconnect, :a@host}, 2_000
          assert_receive {:disconnect, :b@host}, 2_000
          polls({:ok, [:a@host, :b@host]}, 4)
          flush()
          polls({:ok, [:a@host, :b@host]}, 4)
          refute_received {:connect, _}
          assert Membership.members(e.pid) == []

          # Failed polls do not end it: still nobody is dialled.
          serve(e, {:error, :timeout}, 3)
          refute_received {:connect, _}
        end)

      # Logged once when the fence starts, and not on every poll.
      assert length(String.split(log, "fencing")) == 2
    end

    test "a connection made to a fenced node is cut again on the next poll" do
      capture_log(fn ->
        e = listed_engine()
        e.set.({:ok, [:a@host]})
        assert_receive {:disconnect, :a@host}, 2_000
        # a dials this node (a peer still counting it as a member).
        Recorder.connect(e.rec.agent, self(), :a@host)
        assert_receive {:connect, :a@host}
        assert_receive {:disconnect, :a@host}, 2_000
      end)
    end

    test "one answer that leaves the node out does not fence it" do
      capture_log(fn ->
        e = listed_engine()

        # Twice one answer leaves the node out and the next lists it: the
        # count starts again each time, and a is still dialled.
        for _ <- 1..2 do
          e.queue.([{:ok, [:a@host]}, {:ok, [node(), :a@host]}])
          polls({:ok, [:a@host]}, 1)
          polls({:ok, [node(), :a@host]}, 2)
          refute_received {:disconnect, _}
          Recorder.drop(e.rec, :a@host)
          assert_receive {:connect, :a@host}, 2_000
        end

        # Two in a row do fence it.
        e.set.({:ok, [:a@host]})
        assert_receive {:disconnect, :a@host}, 2_000
      end)
    end

    test "failed polls do not fence, nor count as answers" do
      capture_log(fn ->
        e = listed_engine()
        serve(e, {:error, :timeout}, 4)
        refute_received {:disconnect, _}
        Recorder.drop(e.rec, :a@host)
        assert_receive {:connect, :a@host}, 2_000

        # miss, failures, miss: two successful answers in a row left it out.
        e.queue.([{:ok, [:a@host]}, {:error, :timeout}])
        polls({:ok, [:a@host]}, 1)
        polls({:error, :timeout}, 3)
        refute_received {:disconnect, _}
        e.set.({:ok, [:a@host]})
        assert_receive {:disconnect, :a@host}, 2_000
      end)
    end

    test "listed again: the fence is lifted and the listed nodes are dialled" do
      log =
        capture_log(fn ->
          e = listed_engine()
          e.set.({:ok, [:a@host]})
          assert_receive {:disconnect, :a@host}, 2_000
          polls({:ok, [:a@host]}, 2)
          refute_received {:connect, _}

          e.set.({:ok, [node(), :a@host]})
          assert_receive {:connect, :a@host}, 2_000
          assert Membership.members(e.pid) == [:a@host]
        end)

      assert length(String.split(log, "fencing")) == 2
      assert length(String.split(log, "listed again")) == 2
    end
  end

  describe "with confirm (answers that may leave live nodes out)" do
    # The provider answers what the test sets; confirm answers per node
    # from a map the test sets (a missing node: a failed lookup).
    defp confirming_engine(answer, verdicts, opts \\ []) do
      parent = self()
      rec = Recorder.start(parent)
      {:ok, agent} = Agent.start_link(fn -> {answer, verdicts} end)

      poll = fn ->
        send(parent, :polled)
        agent |> Agent.get(& &1) |> elem(0)
      end

      confirm = fn node ->
        send(parent, {:confirm, node})
        agent |> Agent.get(& &1) |> elem(1) |> Map.get(node, {:error, :timeout})
      end

      opts =
        [poll: poll, confirm: confirm, interval: 50, log_results: false] ++
          Recorder.mfas(rec) ++ opts

      {:ok, pid} = Membership.start_link(opts)
      on_exit(fn -> if Process.alive?(pid), do: Process.exit(pid, :kill) end)
      set = fn answer, verdicts -> Agent.update(agent, fn _ -> {answer, verdicts} end) end
      %{pid: pid, rec: rec, set: set}
    end

    test "present: stays and is redialled; absent: dropped at the first answer without it" do
      e = confirming_engine({:ok, [:a@host, :b@host]}, %{})
      assert_receive {:connect, :b@host}, 2_000

      e.set.({:ok, [:a@host]}, %{b@host: :present})
      for _ <- 1..3, do: assert_receive({:confirm, :b@host}, 2_000)
      refute_received {:disconnect, _}
      Recorder.drop(e.rec, :b@host)
      assert_receive {:connect, :b@host}, 2_000

      e.set.({:ok, [:a@host]}, %{b@host: :absent})
      assert_receive {:disconnect, :b@host}, 2_000
      assert Membership.members(e.pid) == [:a@host]
    end

    test "a failed confirmation disconnects nobody; a member stays while connected" do
      e = confirming_engine({:ok, [:a@host, :b@host]}, %{})
      assert_receive {:connect, :b@host}, 2_000
      e.set.({:ok, [:a@host]}, %{})
      for _ <- 1..4, do: assert_receive({:confirm, :b@host}, 2_000)
      refute_received {:disconnect, _}
      assert Enum.sort(Membership.members(e.pid)) == [:a@host, :b@host]

      # Its connection gone, and unconfirmed: forgotten, not dialled.
      Recorder.drop(e.rec, :b@host)

      assert {:ok, _} =
               DynamicSrv.Test.Wait.until(fn -> Membership.members(e.pid) == [:a@host] end, 2_000)

      refute_received {:connect, :b@host}
    end

    test "a failed lookup of the local node's own name is asked again, and changes nothing" do
      e = confirming_engine({:ok, [node(), :a@host]}, %{b@host: :present}, members: [:b@host])
      for _ <- 1..3, do: assert_receive({:confirm, :nonode@nohost}, 2_000)
      assert_receive {:connect, :a@host}, 2_000
      assert Process.alive?(e.pid)
      assert Enum.sort(Membership.members(e.pid)) == [:a@host, :b@host]
    end

    test "where the local node's own name is missing, absent counts as unknown" do
      log =
        capture_log(fn ->
          answer = {:ok, [node(), :a@host, :b@host]}
          e = confirming_engine(answer, %{node() => :absent}, fence: true)

          # The first answer that lists the local node asks about it.
          assert_receive {:confirm, n}, 2_000
          assert n == node()
          assert_receive {:connect, :b@host}, 2_000
          e.set.({:ok, [node(), :a@host]}, %{node() => :absent, b@host: :absent})
          for _ <- 1..3, do: assert_receive({:confirm, :b@host}, 2_000)

          e.set.({:ok, [:a@host]}, %{node() => :absent, b@host: :absent})
          for _ <- 1..3, do: assert_receive({:confirm, :b@host}, 2_000)
          refute_received {:disconnect, _}
        end)

      assert log =~ "its own name has no SRV or address record"
      refute log =~ "fencing"
    end

    test "fences at the first answer without the local node once its own name is gone" do
      log =
        capture_log(fn ->
          e = confirming_engine({:ok, [node(), :a@host]}, %{node() => :present}, fence: true)
          assert_receive {:connect, :a@host}, 2_000
          e.set.({:ok, [:a@host]}, %{node() => :present, a@host: :present})
          for _ <- 1..3, do: assert_receive({:confirm, :nonode@nohost}, 2_000)
          refute_received {:disconnect, _}

          e.set.({:ok, [:a@host]}, %{node() => :absent})
          assert_receive {:disconnect, :a@host}, 2_000
          Membership.members(e.pid)
        end)

      assert log =~ "fencing"
    end
  end
end

defmodule DynamicSrv.MembershipTelemetryTest do
  @moduledoc """
  The engine with `:telemetry` loaded: a stand-in module compiled into the
  VM, which every engine started meanwhile would see, so it runs alone.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Membership
  alias DynamicSrv.Test.Recorder

  test "emits telemetry when :telemetry is loaded, and nothing breaks without it" do
    # Without :telemetry the engine runs as usual (the other tests).
    refute Code.ensure_loaded?(:telemetry)

    # A stand-in with telemetry's execute/3, removed at the end.
    Process.register(self(), :dynamic_srv_telemetry_sink)

    Code.compile_string("""
    defmodule :telemetry do
      def execute(event, measurements, metadata),
        do: send(:dynamic_srv_telemetry_sink, {:telemetry, event, measurements, metadata})
    end
    """)

    on_exit(fn ->
      :code.purge(:telemetry)
      :code.delete(:telemetry)
    end)

    {:ok, answer} = Agent.start_link(fn -> {:ok, [:a@host, :b@host]} end)
    rec = Recorder.start(self())

    {:ok, _} =
      Membership.start_link(
        [poll: fn -> Agent.get(answer, & &1) end, interval: 50, log_results: false] ++
          [topology: :telemetry_test] ++ Recorder.mfas(rec)
      )

    assert_receive {:telemetry, [:libcluster_dynamic_srv, :poll], %{duration: d, nodes: 2},
                    %{topology: :telemetry_test, result: :ok}}
                   when is_integer(d),
                   5_000

    assert_receive {:telemetry, [:libcluster_dynamic_srv, :connect], %{duration: _},
                    %{node: :a@host, result: true}},
                   5_000

    Agent.update(answer, fn _ -> {:error, :timeout} end)

    assert_receive {:telemetry, [:libcluster_dynamic_srv, :poll], %{nodes: 0},
                    %{result: :error, reason: :timeout}},
                   5_000

    Agent.update(answer, fn _ -> {:ok, [:a@host]} end)

    assert_receive {:telemetry, [:libcluster_dynamic_srv, :disconnect], %{count: 1},
                    %{nodes: [:b@host]}},
                   5_000
  end
end
