defmodule DynamicSrv.PackageTest do
  @moduledoc """
  The package as a user gets it: exactly the files of `package[:files]` in
  mix.exs (what `mix hex.build` ships), copied into a temporary directory
  and made read-only, used by a new mix application through the README's
  `path:` install line. The application's `mix compile` builds the NIF with
  cargo (from scratch, under the application's `_build/`: a few minutes),
  then:

    * the NIF answers a real SRV lookup against dnsmasq;
    * the README's dev command, run as written, starts two nodes on their own
      `ERL_DIST_PORT`s that find each other in dnsmasq and connect;
    * an application written as the published package's README has its
      users write it (`config :libcluster`, `Cluster.Supervisor`), with the
      dependency lines of guides/migrating.md, clusters two nodes through
      dnsmasq with libcluster's supervisor (a stand-in of its public
      surface, test/fixtures/libcluster: hex.pm is not reachable here);
    * nothing was written into the package's copy.

  As root, the build and the nodes also run with the copy mounted read-only
  (a bind mount in a mount namespace of their own, gone when they exit), as
  `chmod a-w` does not stop root.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Test.{DnsServer, Node, PackageCopy}

  @moduletag :dnsmasq
  @moduletag :package
  @moduletag timeout: 180_000

  @readme Path.expand("../README.md", __DIR__)
  @guide Path.expand("../guides/migrating.md", __DIR__)
  @epmd_guide Path.expand("../guides/epmd.md", __DIR__)
  # hex.pm is not reachable here: libcluster's public surface, written for
  # this test (see its mix.exs), stands in for `{:libcluster, "~> 3.3"}`.
  @libcluster_stand_in Path.expand("fixtures/libcluster", __DIR__)
  @example_env_sh Path.expand("../examples/release_app/rel/env.sh.eex", __DIR__)
  # Prints "<app> up on <node>", then a line for each of the node's nodeup
  # and nodedown events (those before the application started too: its
  # dependency's discovery starts first).
  @watch """
  defmodule Watch do
    def run(app) do
      :ok = :net_kernel.monitor_nodes(true)
      IO.puts("\#{app} up on \#{node()}")
      Enum.each(Node.list(), &IO.puts("nodeup \#{&1}"))
      loop()
    end

    defp loop do
      receive do
        {event, node} -> IO.puts("\#{event} \#{node}")
      end

      loop()
    end
  end
  """

  # The README's names, used as written.
  @service "my-service.service.consul"
  @readme_node "node-1@#{@service}"
  @readme_port "31337"
  # Variables of the calling shell (make test, MIX_ENV=test) that a user's
  # shell would not have.
  @cleared ~w(MIX_ENV MIX_TARGET MIX_EXS MIX_LOCKFILE MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH
              CARGO_TARGET_DIR ELIXIR_ERL_OPTIONS ERL_FLAGS ERL_ZFLAGS ERL_LIBS ERL_DIST_PORT
              DYNAMIC_SRV_NAMESERVERS DYNAMIC_SRV_TIMEOUT_MS)

  setup_all do
    tmp = Path.join(System.tmp_dir!(), "package_test_#{System.unique_integer([:positive])}")
    # The README's path: line names ../libcluster_dynamic_srv.
    pkg = Path.join(tmp, "libcluster_dynamic_srv")
    app = Path.join(tmp, "new_app")

    on_exit(fn ->
      System.cmd("chmod", ["-R", "u+w", tmp], stderr_to_stdout: true)
      File.rm_rf!(tmp)
    end)

    copied = PackageCopy.copy(pkg)
    {_, 0} = System.cmd("chmod", ["-R", "a-w", pkg])
    before = snapshot(pkg)
    write_app(app)

    started = System.monotonic_time(:millisecond)
    {out, status} = read_only(pkg, app, ["mix", "compile"])
    seconds = div(System.monotonic_time(:millisecond) - started, 1000)
    assert status == 0, "mix compile of the new application failed:\n#{out}"
    IO.puts("\npackage_test: mix compile of the new application took #{seconds} s")

    %{pkg: pkg, app: app, copied: copied, before: before}
  end

  test "package[:files] builds as a path: dependency without writing into it", ctx do
    assert "native/dynamic_srv_nif/src/lib.rs" in ctx.copied
    assert "LICENSE" in ctx.copied
    assert snapshot(ctx.pkg) == ctx.before
    refute File.exists?(Path.join(ctx.pkg, "target"))

    build = Path.join(ctx.app, "_build/dev/lib/libcluster_dynamic_srv")
    assert File.regular?(Path.join(build, "priv/native/libdynamic_srv_nif.so"))
    assert File.dir?(Path.join(build, "native/target/release"))

    # Nothing changed: cargo is not run again.
    {out, 0} = read_only(ctx.pkg, ctx.app, ["mix", "compile"])
    refute out =~ "Compiling the dynamic_srv_nif NIF"
    assert snapshot(ctx.pkg) == ctx.before
  end

  test "the NIF of the built package answers an SRV lookup", ctx do
    dns =
      DnsServer.start([
        {:srv, "lookup.test", "a.lookup.test", 1111},
        {:srv, "lookup.test", "b.lookup.test", 2222}
      ])

    on_exit(fn -> DnsServer.stop(dns) end)

    code = """
    {:ok, records} = DynamicSrv.Resolver.lookup_srv("lookup.test", nameservers: #{inspect(DnsServer.nameservers(dns))})
    IO.puts(inspect(Enum.sort(for r <- records, do: {r.target, r.port})))
    """

    {out, status} = read_only(ctx.pkg, ctx.app, ["mix", "run", "--no-start", "-e", code])
    assert status == 0, out
    assert out =~ ~s|[{"a.lookup.test", 1111}, {"b.lookup.test", 2222}]|
  end

  test "the README's dev command: two nodes on dynamic ports cluster through DNS", ctx do
    [port1, port2] = for _ <- 1..2, do: DnsServer.free_port()
    node1 = @readme_node
    node2 = "node-2@#{@service}"

    dns = service_dns([{"node-1", port1}, {"node-2", port2}])

    first = start_readme_node(ctx, node1, port1, dns)
    await_line(first, "new_app up on #{node1}")
    second = start_readme_node(ctx, node2, port2, dns)
    await_line(second, "new_app up on #{node2}")

    # Each node listens on its own ERL_DIST_PORT and finds the other.
    await_line(first, "nodeup #{node2}")
    await_line(second, "nodeup #{node1}")

    for port <- [port1, port2] do
      assert {:ok, socket} = :gen_tcp.connect({127, 0, 0, 1}, port, [], 1_000)
      :gen_tcp.close(socket)
    end

    assert snapshot(ctx.pkg) == ctx.before
  end

  test "an app written for the published package, switched as the guide says, clusters via libcluster",
       ctx do
    app = Path.join(Path.dirname(ctx.app), "published_app")
    write_published_app(app)
    # The first application's cargo build, reused: cargo finds it up to date.
    target = Path.join(ctx.app, "_build/dev/lib/libcluster_dynamic_srv/native/target")
    {out, status} = read_only(ctx.pkg, app, ["mix", "compile"], [{"CARGO_TARGET_DIR", target}])
    assert status == 0, "mix compile of the switched application failed:\n#{out}"

    [port1, port2] = for _ <- 1..2, do: DnsServer.free_port()
    node1 = "node-0@#{@service}"
    node2 = "node-1@#{@service}"

    dns = service_dns([{"node-0", port1}, {"node-1", port2}])
    ctx = %{ctx | app: app}

    first = start_readme_node(ctx, node1, port1, dns)
    await_line(first, "published_app up on #{node1}")
    second = start_readme_node(ctx, node2, port2, dns)
    await_line(second, "published_app up on #{node2}")
    seen = await_line(first, "nodeup #{node2}")
    await_line(second, "nodeup #{node1}")

    # node-0 dials (the pair's first name) through libcluster's
    # Cluster.Strategy.connect_nodes/4, which logs the connect in its own
    # words through its logger.
    logged? = &(&1 =~ ~s|[libcluster:dyn_srv] connected to :"#{node2}"|)
    unless Enum.any?(seen, logged?), do: await_line(first, logged?)
  end

  test "guides/epmd.md's rel/env.sh.eex is the example release's (which release_test runs)" do
    [_, block] = Regex.run(~r/`rel\/env\.sh\.eex`:\n\n```sh\n(.*?)```/s, File.read!(@epmd_guide))
    assert code_lines(block) == code_lines(File.read!(@example_env_sh))
    assert block =~ ~s|if [ -z "$ERL_DIST_PORT" ]; then|
  end

  # dnsmasq serving the service's SRV record and an A record (loopback) for
  # each `{label, port}`; stopped when the test ends.
  defp service_dns(nodes) do
    dns =
      DnsServer.start(
        for {label, port} <- nodes,
            record <- [
              {:srv, @service, "#{label}.#{@service}", port},
              {:a, "#{label}.#{@service}", {127, 0, 0, 1}}
            ],
            do: record
      )

    on_exit(fn -> DnsServer.stop(dns) end)
    dns
  end

  # Every file and directory under `dir` with its kind, size, mtime, mode
  # and content hash.
  defp snapshot(dir) do
    for path <- Path.wildcard(Path.join(dir, "**"), match_dot: true) |> Enum.sort() do
      stat = File.lstat!(path, time: :posix)

      hash = if stat.type == :regular, do: :crypto.hash(:sha256, File.read!(path)), else: nil

      {Path.relative_to(path, dir), stat.type, stat.size, stat.mtime, stat.mode, hash}
    end
  end

  # A new application as `mix new new_app --sup` would start it, depending
  # on the package through the README's path: line, with standalone SRV
  # discovery configured and a process that prints the node's nodeup events.
  defp write_app(app) do
    [install_line] =
      Regex.run(~r/\{:libcluster_dynamic_srv, path: "[^"]+"\}/, File.read!(@readme))

    files = %{
      "mix.exs" => """
      defmodule NewApp.MixProject do
        use Mix.Project

        def project do
          [app: :new_app, version: "0.1.0", elixir: "~> 1.14", deps: deps()]
        end

        def application do
          [extra_applications: [:logger], mod: {NewApp.Application, []}]
        end

        defp deps do
          [#{install_line}]
        end
      end
      """,
      "config/config.exs" => """
      import Config

      config :libcluster_dynamic_srv,
        via: DynamicSrv.Via.Srv,
        interval: 1,
        service: #{inspect(@service)}
      """,
      "lib/new_app/application.ex" => """
      defmodule NewApp.Application do
        use Application

        @impl true
        def start(_type, _args) do
          Supervisor.start_link([{Task, fn -> Watch.run("new_app") end}], strategy: :one_for_one)
        end
      end
      """,
      "lib/watch.ex" => @watch
    }

    write_files(app, files)
  end

  defp write_files(app, files) do
    for {path, text} <- files do
      File.mkdir_p!(Path.dirname(Path.join(app, path)))
      File.write!(Path.join(app, path), text)
    end
  end

  # An application as the published package's README has its users write
  # it (`config :libcluster` in config/runtime.exs, Cluster.Supervisor in the
  # application's tree), with the dependency lines of guides/migrating.md:
  # the package as the README installs it, and libcluster (its stand-in).
  defp write_published_app(app) do
    [_, block] = Regex.run(~r/### Dependencies\n\n```elixir\n(.*?)```/s, File.read!(@guide))
    assert block =~ ~s|{:libcluster, "~> 3.3"}|

    [install_line] =
      Regex.run(~r/\{:libcluster_dynamic_srv, path: "[^"]+"\}/, File.read!(@readme))

    deps =
      block
      |> String.replace(~r/\{:libcluster_dynamic_srv, git: "[^"]+"\}/, install_line)
      |> String.replace(
        ~s|{:libcluster, "~> 3.3"}|,
        "{:libcluster, path: #{inspect(@libcluster_stand_in)}}"
      )

    files = %{
      "mix.exs" => """
      defmodule PublishedApp.MixProject do
        use Mix.Project

        def project do
          [app: :published_app, version: "0.1.0", elixir: "~> 1.14", deps: deps()]
        end

        def application do
          [extra_applications: [:logger], mod: {PublishedApp.Application, []}]
        end

      #{deps}end
      """,
      "config/runtime.exs" => """
      import Config

      config :libcluster,
        topologies: [
          dyn_srv: [
            strategy: Cluster.Strategy.DynamicSrv,
            config: [service: #{inspect(@service)}]
          ]
        ]
      """,
      "lib/published_app/application.ex" => """
      defmodule PublishedApp.Application do
        use Application

        @impl true
        def start(_type, _args) do
          topologies = Application.get_env(:libcluster, :topologies, [])

          children = [
            {Cluster.Supervisor, [topologies, [name: PublishedApp.ClusterSupervisor]]},
            {Task, fn -> Watch.run("published_app") end}
          ]

          Supervisor.start_link(children, strategy: :one_for_one)
        end
      end
      """,
      "lib/watch.ex" => @watch
    }

    write_files(app, files)
  end

  # Runs `command` in `app` with a user's environment; as root, inside a
  # mount namespace where `pkg` is mounted read-only.
  defp read_only(pkg, app, command, extra_env \\ []) do
    {executable, args} = read_only_command(pkg, command)
    set = for {name, _} <- extra_env, do: name
    env = Enum.map(@cleared -- set, &{&1, nil}) ++ extra_env

    System.cmd("timeout", ["-s", "KILL", "1800", executable | args],
      cd: app,
      env: env,
      stderr_to_stdout: true
    )
  end

  defp read_only_command(pkg, [program | args]) do
    unshare = System.find_executable("unshare")

    if root?() and unshare do
      script =
        ~S|mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"|

      {unshare,
       ["--mount", "--propagation", "private", "sh", "-c", script, "sh", pkg, program | args]}
    else
      {System.find_executable(program), args}
    end
  end

  defp root?, do: System.cmd("id", ["-u"]) == {"0\n", 0}

  # The README's dev command block, run by sh in the application's
  # directory with the node's name and port put in for the README's; its
  # last line (elixir) is exec'd, so the port's OS pid is the node's.
  defp start_readme_node(ctx, name, port, dns) do
    [_, block] =
      Regex.run(~r/## Running a node on a dynamic port.*?```sh\n(.*?)```/s, File.read!(@readme))

    assert block =~ "ERL_DIST_PORT=#{@readme_port} " and block =~ @readme_node

    lines =
      block
      |> String.replace("ERL_DIST_PORT=#{@readme_port} ", "ERL_DIST_PORT=#{port} ")
      |> String.replace(@readme_node, name)
      |> String.split("\n", trim: true)

    script = Enum.join(Enum.drop(lines, -1) ++ ["exec " <> List.last(lines)], "\n")
    {executable, args} = read_only_command(ctx.pkg, ["sh", "-c", script])
    env = Enum.map(@cleared, &{&1, nil}) ++ DnsServer.node_env(dns)
    os_port = Node.open_port(executable, args, env, cd: ctx.app)

    {:os_pid, os_pid} = Port.info(os_port, :os_pid)
    on_exit(fn -> System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true) end)
    %{port: os_port, name: name, os_pid: os_pid}
  end

  # Reads the node's output until `expected` is a line of it (or a line
  # for which the function `expected` is true); returns the lines read.
  defp await_line(%{port: port, name: name}, expected, timeout \\ 60_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    await_line(port, name, expected, deadline, [])
  end

  defp await_line(port, name, expected, deadline, seen) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, {_, line}}} ->
        if matches?(expected, line),
          do: Enum.reverse([line | seen]),
          else: await_line(port, name, expected, deadline, [line | seen])

      {^port, {:exit_status, status}} ->
        flunk("#{name} exited #{status} before #{inspect(expected)}:\n#{output(seen)}")
    after
      wait -> flunk("#{name} printed no #{inspect(expected)}:\n#{output(seen)}")
    end
  end

  defp matches?(expected, line) when is_function(expected, 1), do: expected.(line)
  defp matches?(expected, line), do: expected == line

  defp output(seen), do: seen |> Enum.reverse() |> Enum.join("\n")

  defp code_lines(text) do
    text
    |> String.split("\n")
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == "" or String.starts_with?(&1, "#")))
  end
end
