defmodule DynamicSrv.ReleaseTest do
  @moduledoc """
  Builds a real release of examples/release_app (`MIX_ENV=prod mix release`,
  into a temporary directory) and runs it with `DynamicSrv.Epmd` on a free
  ERL_DIST_PORT and no epmd daemon: `daemon`, `rpc`, `remote`, `pid`,
  `restart`, `eval` and `stop` of `bin/release_app`, and clustering with a peer found through
  DNS SRV.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, NoEpmd, Wait}

  @moduletag :dnsmasq
  @moduletag :release
  @moduletag timeout: 240_000

  @app_dir Path.expand("../examples/release_app", __DIR__)
  @default_node "release_app@127.0.0.1"
  # Variables of the calling shell that would change how the release runs.
  @cleared ~w(RELEASE_NODE RELEASE_COOKIE RELEASE_DISTRIBUTION RELEASE_MODE RELEASE_TMP
              RELEASE_VM_ARGS RELEASE_REMOTE_VM_ARGS ELIXIR_ERL_OPTIONS ERL_FLAGS ERL_ZFLAGS
              ERL_DIST_PORT CLUSTER_SERVICE DYNAMIC_SRV_NAMESERVERS DYNAMIC_SRV_TIMEOUT_MS)

  setup_all do
    tmp =
      Path.join(
        System.tmp_dir!(),
        "release_test_#{System.pid()}_#{System.unique_integer([:positive])}"
      )

    File.mkdir_p!(tmp)

    on_exit(fn ->
      kill_processes_using(tmp)
      File.rm_rf!(tmp)
    end)

    %{tmp: tmp, root: build_release(tmp)}
  end

  setup %{tmp: tmp} do
    # Whatever a test started from the release (the daemon, run_erl, helper
    # nodes, script) names the temporary directory on its command line.
    on_exit(fn -> kill_processes_using(tmp) end)
    :ok
  end

  test "the build leaves the example's tree as it was and puts the NIF into the release", %{
    root: root
  } do
    assert Path.basename(nif_path(root)) == "libdynamic_srv_nif.so"

    assert File.read!(Path.join(root, "releases/0.1.0/vm.args")) =~
             "-epmd_module Elixir.DynamicSrv.Epmd"

    assert File.read!(Path.join(root, "releases/0.1.0/remote.vm.args")) =~
             "-epmd_module Elixir.DynamicSrv.Epmd"

    # build_release/1 compared the example's directory before and after.
  end

  test "daemon, rpc, remote, pid, restart, eval and stop work with no epmd daemon", %{root: root} do
    port = DnsServer.free_port()
    env = [{"ERL_DIST_PORT", to_string(port)}]

    assert {_, 0} = release(root, ["daemon"], env)
    wait_for_rpc(root, env, @default_node)

    # The node: its name, its port, its epmd module, its NIF (from the
    # release's own lib/).
    assert rpc(root, env, "IO.puts(ReleaseApp.status())") ==
             "node=#{@default_node} dist_port=#{port} epmd_module=Elixir.DynamicSrv.Epmd " <>
               "nif=#{nif_path(root)}\n"

    assert {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, port, [], 1_000)
    :gen_tcp.close(socket)

    # The rpc helper (the group leader's node) is a hidden node named
    # rpc-XXXX-<node>, connected to the node.
    helper = ~S|gl = node(Process.group_leader()); IO.puts("#{gl} #{gl in Node.list(:hidden)}")|
    assert rpc(root, env, helper) =~ ~r/^rpc-[0-9a-f]+-release_app@127\.0\.0\.1 true\n$/

    assert rpc(
             root,
             env,
             ~s|IO.inspect(DynamicSrv.Epmd.address_please(~c"release_app", ~c"127.0.0.1", :inet))|
           ) ==
             "{:ok, {127, 0, 0, 1}, #{port}, 5}\n"

    {pid_out, 0} = release(root, ["pid"], env)
    os_pid = String.trim(pid_out)
    assert File.read!("/proc/#{os_pid}/comm") == "beam.smp\n"

    # remote: an IEx shell on the node, whose terminal (the group leader) is
    # on the rem-XXXX-<node> helper.
    assert remote_session(root, env) =~
             ~r/remote shell on release_app@127\.0\.0\.1 via rem-[0-9a-f]+-release_app@127\.0\.0\.1/

    assert rpc(root, env, "IO.puts(:still_up)") == "still_up\n"

    # restart reboots the VM in place (init:restart/0): the epmd module and
    # the NIF start again and the node is reachable at the same port.
    supervisor = "IO.inspect(Process.whereis(ReleaseApp.Supervisor))"
    before = rpc(root, env, supervisor)
    assert {_, 0} = release(root, ["restart"], env)

    assert {:ok, _} =
             Wait.until(
               fn ->
                 case release(root, ["rpc", supervisor], env) do
                   {"#PID<" <> _ = now, 0} -> now != before
                   _ -> false
                 end
               end,
               30_000,
               200
             )

    assert rpc(root, env, "IO.puts(ReleaseApp.status())") =~ "dist_port=#{port} "
    assert rpc(root, env, "IO.puts(System.pid())") == os_pid <> "\n"

    # eval boots the release's code without distribution: it needs neither
    # ERL_DIST_PORT nor the node, and loads the NIF. The result comes back as
    # an external term and is compared as data: the text of an inspected map
    # lists its keys in an order that differs between OTP versions.
    {eval_out, 0} =
      release(root, [
        "eval",
        "IO.puts(node()); " <>
          ~s|IO.puts(Base.encode64(:erlang.term_to_binary(DynamicSrv.Env.read_resolver_defaults("127.0.0.1:5353", "900"))))|
      ])

    assert ["nonode@nohost", encoded] = String.split(eval_out, "\n", trim: true)

    assert :erlang.binary_to_term(Base.decode64!(encoded)) ==
             {:ok, %{nameservers: [{{127, 0, 0, 1}, 5353}], timeout: 900}}

    assert_no_epmd(root)

    assert {_, 0} = release(root, ["stop"], env)
    assert {:ok, _} = Wait.until(fn -> not File.exists?("/proc/#{os_pid}") end, 20_000)
    assert {:error, :econnrefused} = :gen_tcp.connect({127, 0, 0, 1}, port, [], 1_000)
    assert {_, status} = release(root, ["pid"], env)
    assert status != 0
  end

  test "the release clusters with a node it finds through DNS SRV", %{root: root} do
    svc = "release.test"
    [rel_port, peer_port] = for _ <- 1..2, do: DnsServer.free_port()

    records =
      for {label, port} <- [{"rel-0", rel_port}, {"peer-0", peer_port}],
          record <- [
            {:srv, svc, "#{label}.#{svc}", port},
            {:a, "#{label}.#{svc}", {127, 0, 0, 1}}
          ],
          do: record

    dns = DnsServer.start(records)
    dns_env = [{"DYNAMIC_SRV_NAMESERVERS", DnsServer.env_value(dns)}]
    peer = Node.start("peer-0@#{svc}", dist_port: peer_port, env: dns_env)

    on_exit(fn ->
      Node.stop(peer)
      DnsServer.stop(dns)
    end)

    env =
      dns_env ++
        [
          {"ERL_DIST_PORT", to_string(rel_port)},
          {"RELEASE_NODE", "rel-0@#{svc}"},
          {"RELEASE_COOKIE", "dynamic_srv_test"},
          {"CLUSTER_SERVICE", svc}
        ]

    assert {_, 0} = release(root, ["daemon"], env)
    wait_for_rpc(root, env, "rel-0@#{svc}")
    {pid_out, 0} = release(root, ["pid"], env)
    os_pid = String.trim(pid_out)

    # Cluster.Strategy.DynamicSrv, started by the example app, connects the
    # peer it finds in the SRV answer.
    assert {:ok, _} =
             Wait.until(
               fn -> rpc(root, env, "IO.inspect(Node.list())") == ~s|[:"peer-0@#{svc}"]\n| end,
               20_000,
               500
             )

    assert Node.eval(peer, "Node.list()") == [:"rel-0@#{svc}"]

    assert Node.eval(peer, ~s|:erpc.call(:"rel-0@#{svc}", ReleaseApp, :status, [])|) ==
             "node=rel-0@#{svc} dist_port=#{rel_port} epmd_module=Elixir.DynamicSrv.Epmd " <>
               "nif=#{nif_path(root)}"

    assert_no_epmd(root)
    assert {_, 0} = release(root, ["stop"], env)
    assert {:ok, _} = Wait.until(fn -> not File.exists?("/proc/#{os_pid}") end, 20_000)
  end

  test "commands that reach the node say to export ERL_DIST_PORT when it is unset", %{
    root: root
  } do
    for command <- [["rpc", "IO.puts(1)"], ["stop"], ["remote"], ["daemon"]] do
      {out, status} = release(root, command)
      assert status == 1
      assert out =~ "ERROR: export ERL_DIST_PORT=<the node's distribution port> before"
    end
  end

  defp build_release(tmp) do
    before = File.ls!(@app_dir)
    root = Path.join(tmp, "rel")

    {out, status} =
      System.cmd(System.find_executable("mix"), ["release", "--path", root, "--overwrite"],
        cd: @app_dir,
        env: [
          {"MIX_ENV", "prod"},
          {"MIX_BUILD_PATH", Path.join(tmp, "build")},
          {"MIX_DEPS_PATH", Path.join(tmp, "deps")},
          # Cargo reuses this project's build of the same sources instead of
          # building from scratch; test/package_test.exs covers the default.
          {"CARGO_TARGET_DIR", Mix.Tasks.Compile.DynamicSrvNif.target_dir()}
        ],
        stderr_to_stdout: true
      )

    assert status == 0, "mix release of examples/release_app failed:\n#{out}"
    assert File.ls!(@app_dir) == before
    root
  end

  # The NIF in the release: lib/libcluster_dynamic_srv-<vsn>/priv/native/.
  defp nif_path(root) do
    case Path.wildcard(Path.join(root, "lib/libcluster_dynamic_srv-*/priv/native/*.so")) do
      [path] -> path
      other -> flunk("expected one NIF in the release, found #{inspect(other)}")
    end
  end

  # bin/release_app with the given arguments and extra environment; a
  # command that hangs is killed after a minute.
  defp release(root, args, env \\ []) do
    env = Enum.map(@cleared, &{&1, nil}) ++ env

    System.cmd("timeout", ["-s", "KILL", "60", Path.join(root, "bin/release_app") | args],
      env: env,
      stderr_to_stdout: true
    )
  end

  defp rpc(root, env, code) do
    case release(root, ["rpc", code], env) do
      {out, 0} -> out
      {out, status} -> flunk("bin/release_app rpc #{inspect(code)} exited #{status}:\n#{out}")
    end
  end

  # Until rpc reaches the node, or the daemon (run_erl and the VM, both
  # naming the release's directory) is gone: a VM that halts at boot fails
  # the test at once, with its log.
  defp wait_for_rpc(root, env, node) do
    poll = fn ->
      cond do
        release(root, ["rpc", "IO.puts(node())"], env) == {node <> "\n", 0} -> :up
        pids_using(root) == [] -> :gone
        true -> false
      end
    end

    result = Wait.until(poll, 60_000, 200)

    if result != {:ok, :up} do
      log =
        root |> Path.join("tmp/log/erlang.log.*") |> Path.wildcard() |> Enum.map(&File.read!/1)

      flunk(
        "bin/release_app rpc never reached #{node} (#{inspect(result)}); the daemon's log:\n#{log}"
      )
    end
  end

  # bin/release_app remote needs a terminal for its remote shell: script(1)
  # gives it one. The session prints a line on the node, then leaves with
  # ^G q, which stops the helper node only.
  #
  # The session must not end by closing its terminal: the helper would read
  # EOF, and IEx's server of a remote shell runs on the node with
  # on_eof: :halt, so it calls System.halt(0) there (Elixir 1.18 on OTP 27:
  # the node exits with status 0 and logs nothing). Whether the helper reads
  # that EOF or dies of the SIGHUP first depends on whether SIGHUP is ignored
  # where the tests run (nohup): that made this test flaky.
  defp remote_session(root, env) do
    script = System.find_executable("script") || flunk("script(1) (util-linux) is not installed")
    port_env = Enum.map(@cleared, &{&1, false}) ++ env

    port =
      Port.open({:spawn_executable, script}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["-qec", Path.join(root, "bin/release_app") <> " remote", "/dev/null"],
        env:
          Enum.map(port_env, fn {k, v} -> {String.to_charlist(k), v && String.to_charlist(v)} end)
      ])

    out = read_until(port, "iex(#{@default_node})1>", "")

    Port.command(
      port,
      ~s|IO.puts(Enum.join(["remote shell on", node(), "via", node(Process.group_leader())], " "))\n|
    )

    out = read_until(port, "remote shell on ", out)
    # ^G only while the shell waits for input: sent during the evaluation,
    # OTP 27's shell reads it as a character of the next line.
    out = read_until(port, "iex(#{@default_node})2>", out)
    Port.command(port, <<7>>)

    case read_until(port, "-->", out, 10_000) do
      {:ok, out} ->
        Port.command(port, "q\n")

        receive do
          {^port, {:exit_status, 0}} -> out
        after
          15_000 -> flunk("the remote shell did not end after ^G q:\n#{out}")
        end

      # OTP 27.3's shell echoes ^G as text on this pseudo-terminal (OTP 25
      # and 29 switch to the job-control prompt): the node itself halts the
      # helper (the rem-XXXX-<node> the session printed), which ends the
      # session with no EOF on the node's shell (the test checks the node
      # with rpc next).
      {:timeout, out} ->
        [_, helper] = Regex.run(~r/via (rem-[0-9a-f]+-release_app@[0-9.]+)/, out)

        assert rpc(root, env, ~s|:erpc.cast(:"#{helper}", :erlang, :halt, [])|) == ""

        receive do
          {^port, {:exit_status, _}} -> out
        after
          15_000 -> flunk("the remote shell did not end when its helper node halted:\n#{out}")
        end
    end
  end

  # Like read_until/3, but returns {:timeout, output} after `timeout` ms.
  defp read_until(port, expected, acc, timeout) do
    if String.contains?(acc, expected) do
      {:ok, acc}
    else
      receive do
        {^port, {:data, data}} -> read_until(port, expected, acc <> data, timeout)
        {^port, {:exit_status, status}} -> flunk("remote exited #{status}:\n#{acc}")
      after
        timeout -> {:timeout, acc}
      end
    end
  end

  defp read_until(port, expected, acc) do
    if String.contains?(acc, expected) do
      acc
    else
      receive do
        {^port, {:data, data}} ->
          read_until(port, expected, acc <> data)

        {^port, {:exit_status, status}} ->
          flunk("remote exited #{status} before #{inspect(expected)}:\n#{acc}")
      after
        30_000 -> flunk("remote printed no #{inspect(expected)}:\n#{acc}")
      end
    end
  end

  # No epmd daemon: none of the processes of the release (which carry its
  # directory in their command line or environment, as would an epmd one of
  # them started) is an epmd or has a socket on 4369. An epmd that runs on
  # the machine for other reasons is allowed.
  defp assert_no_epmd(root) do
    assert NoEpmd.assert_none(root) > 0, "no process of the release found"
  end

  defp kill_processes_using(dir) do
    Enum.each(pids_using(dir), &System.cmd("kill", ["-KILL", &1], stderr_to_stdout: true))
  end

  defp pids_using(dir) do
    for proc <- Path.wildcard("/proc/[0-9]*"),
        {:ok, cmdline} <- [File.read(Path.join(proc, "cmdline"))],
        String.contains?(cmdline, dir),
        do: Path.basename(proc)
  end
end
