defmodule DynamicSrv.Test.Node do
  @moduledoc """
  A real BEAM node in its own OS process, started with `DynamicSrv.Epmd` as
  its epmd module (no epmd daemon) and controlled over its standard input and
  output by `DynamicSrv.Test.Agent`, so the controlling VM needs no
  distribution. When the controlling VM goes away, the node's stdin closes
  and it halts.
  """

  # `port` holds the relay process that owns the OS port.
  defstruct [:name, :port, :dist_port, :os_pid, :log]

  @marker "DYNAMIC_SRV_AGENT "

  @doc """
  Starts `name` (e.g. `"node-0@svc.service.consul"`; `nil` for a VM
  started without a name, with no distribution). Options: `:dist_port`
  (`ERL_DIST_PORT`; `nil` leaves it unset), `:env` (more variables),
  `:eval` (Elixir code run at start, before the agent loop), `:erl` (more
  emulator flags), `:hidden`, `:wait` (wait for the agent; default true),
  `:netns` (run inside that network namespace).
  """
  def start(name, opts \\ []) do
    dist_port = Keyword.get(opts, :dist_port)
    # The epmd module runs while the kernel boots, before elixir's own -pa
    # handling, so the build's code paths go to the emulator directly.
    code_path_flags = Enum.map_join(code_paths(), " ", &"-pa #{&1}")

    erl_flags = [
      "-start_epmd false -epmd_module Elixir.DynamicSrv.Epmd",
      code_path_flags,
      Keyword.get(opts, :erl, "")
    ]

    erl_flags =
      if Keyword.get(opts, :hidden, false), do: erl_flags ++ ["-hidden"], else: erl_flags

    env =
      [
        {"ELIXIR_ERL_OPTIONS", Enum.join(erl_flags, " ")},
        {"ERL_DIST_PORT", dist_port && to_string(dist_port)},
        {"ERL_AFLAGS", "-kernel logger_level warning"},
        # Marks the node and anything it starts as this test VM's (see
        # DynamicSrv.Test.NoEpmd).
        {"DYNAMIC_SRV_TEST_VM", System.pid()}
      ] ++ Keyword.get(opts, :env, [])

    code = "#{Keyword.get(opts, :eval, ":ok")}; DynamicSrv.Test.Agent.loop()"

    # A nil name starts a VM without distribution (it may call Node.start/2).
    name_args = if name, do: ["--name", name], else: []
    args = name_args ++ ["--cookie", "dynamic_srv_test", "-e", code]

    {executable, args} =
      case Keyword.get(opts, :netns) do
        nil ->
          {System.find_executable("elixir"), args}

        ns ->
          {System.find_executable("ip"),
           ["netns", "exec", ns, System.find_executable("elixir") | args]}
      end

    {relay, os_pid} = start_relay(executable, args, env)
    node = %__MODULE__{name: name, port: relay, dist_port: dist_port, os_pid: os_pid, log: []}

    if Keyword.get(opts, :wait, true), do: wait_ready(node), else: node
  end

  @doc """
  Code that starts `Cluster.Strategy.DynamicSrv` on a node as libcluster's
  supervisor does (a state map with the real `:net_kernel` connect),
  unlinked and registered as `name`; it evaluates to `:started`.
  """
  def strategy_code(topology, service, interval, name) do
    """
    state = %{topology: #{inspect(topology)}, config: [service: #{inspect(service)}, polling_interval: #{interval}],
              connect: {:net_kernel, :connect_node, []}, disconnect: {:erlang, :disconnect_node, []},
              list_nodes: {:erlang, :nodes, [:connected]}, meta: nil}
    # Started by a process that ends at once (as a supervisor would be its
    # parent), not by the evaluating process, which later evals may use to
    # send exit signals.
    caller = self()
    spawn(fn ->
      {:ok, pid} = Cluster.Strategy.DynamicSrv.start_link([state])
      Process.unlink(pid)
      send(caller, {:strategy_started, pid})
    end)
    pid = receive do {:strategy_started, pid} -> pid end
    Process.register(pid, #{inspect(name)})
    :started
    """
  end

  @doc "Evaluates `code` on the node and returns its value."
  def eval(%__MODULE__{} = node, code, timeout \\ 15_000) do
    call(node, {:eval, Base.encode64(code), timeout}, timeout)
  end

  @doc "Collects the node's output until it exits; returns `{status, output}`."
  def await_exit(%__MODULE__{} = node, timeout \\ 20_000) do
    call(node, {:await_exit, timeout}, timeout)
  end

  @doc "Kills the node's OS process and its relay."
  def stop(%__MODULE__{port: relay, os_pid: os_pid}) do
    System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true)
    Process.exit(relay, :kill)
    :ok
  end

  defp wait_ready(node) do
    case eval(node, ":ready", 30_000) do
      :ready -> node
      other -> raise "node #{node.name} did not start: #{inspect(other)}"
    end
  end

  # The port is owned by a relay process, so any test process (not only the
  # one that started the node, e.g. a setup_all) can talk to the node. The
  # relay kills the node when its starter exits.
  defp start_relay(executable, args, env) do
    starter = self()

    relay =
      spawn(fn ->
        ref = Process.monitor(starter)

        port = open_port(executable, args, env)

        {:os_pid, os_pid} = Port.info(port, :os_pid)
        send(starter, {self(), :os_pid, os_pid})
        relay_loop(port, os_pid, ref)
      end)

    receive do
      {^relay, :os_pid, os_pid} -> {relay, os_pid}
    end
  end

  @doc """
  Runs `executable` as a port of the calling process, its output (stderr
  merged) arriving as lines. `env` is `[{name, value}]` of strings, where a
  nil value unsets the variable; `opts` are more `Port.open/2` options.
  """
  def open_port(executable, args, env, opts \\ []) do
    env =
      for {k, v} <- env,
          do: {String.to_charlist(k), if(v, do: String.to_charlist(v), else: false)}

    Port.open(
      {:spawn_executable, executable},
      [:binary, :exit_status, :stderr_to_stdout, {:line, 65_536}, args: args, env: env] ++ opts
    )
  end

  defp call(%__MODULE__{port: relay}, request, timeout) do
    ref = Process.monitor(relay)
    send(relay, {request, self(), ref})

    receive do
      {^ref, reply} ->
        Process.demonitor(ref, [:flush])
        reply

      {:DOWN, ^ref, _, _, _} ->
        {:node_exited, :relay_gone}
    after
      timeout + 5_000 -> {:error, :relay_timeout}
    end
  end

  # Output of the node stays in the mailbox until a request reads it.
  defp relay_loop(port, os_pid, starter_ref) do
    receive do
      {{:eval, encoded, timeout}, from, ref} ->
        Port.command(port, encoded <> "\n")
        send(from, {ref, await_result(port, timeout)})
        relay_loop(port, os_pid, starter_ref)

      {{:await_exit, timeout}, from, ref} ->
        send(from, {ref, collect_exit(port, [], System.monotonic_time(:millisecond) + timeout)})
        relay_loop(port, os_pid, starter_ref)

      {:DOWN, ^starter_ref, _, _, _} ->
        System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true)
    end
  end

  # The node's other output is skipped; its last lines are kept for the
  # case it exits, which they usually explain.
  defp await_result(port, timeout, last \\ []) do
    receive do
      {^port, {:data, {:eol, @marker <> payload}}} ->
        payload |> Base.decode64!() |> :erlang.binary_to_term()

      {^port, {:data, {_, line}}} ->
        await_result(port, timeout, Enum.take([line | last], 20))

      {^port, {:exit_status, status}} ->
        {:node_exited, status, last |> Enum.reverse() |> Enum.join("\n")}
    after
      timeout -> {:error, :agent_timeout}
    end
  end

  defp collect_exit(port, acc, deadline) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_, line}}} -> collect_exit(port, [line | acc], deadline)
      {^port, {:exit_status, status}} -> {status, acc |> Enum.reverse() |> Enum.join("\n")}
    after
      wait -> {:timeout, acc |> Enum.reverse() |> Enum.join("\n")}
    end
  end

  @doc "The code paths of this project's build, for the nodes it starts."
  def code_paths do
    :code.get_path()
    |> Enum.map(&to_string/1)
    |> Enum.filter(&String.contains?(&1, "/_build/"))
  end
end

defmodule DynamicSrv.Test.Wait do
  @moduledoc "Polls a condition until it holds or a deadline passes; kills and waits."

  @doc "Kills `pid` and returns once it is gone."
  def kill(pid) do
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, _, _, _} -> :ok
    end
  end

  def until(fun, timeout, step \\ 100) do
    deadline = System.monotonic_time(:millisecond) + timeout
    loop(fun, deadline, step)
  end

  defp loop(fun, deadline, step) do
    case fun.() do
      result when result not in [false, nil] ->
        {:ok, result}

      _ ->
        if System.monotonic_time(:millisecond) >= deadline do
          :timeout
        else
          Process.sleep(step)
          loop(fun, deadline, step)
        end
    end
  end
end
