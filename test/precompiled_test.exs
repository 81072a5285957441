defmodule DynamicSrv.Test.HttpsServer do
  @moduledoc """
  For the test below: a small HTTPS file server on loopback (`:ssl`, HTTP/1.1, GET only): serves
  the files of one directory by name, answers 404 otherwise, and counts the
  requests it served. Started unlinked; `stop/1` closes its listener and
  every connection.
  """

  defstruct [:port, :pid]

  @doc """
  Serves `dir` on a free port of 127.0.0.1 with the certificate `certfile`
  and key `keyfile`.
  """
  def start(dir, certfile, keyfile) do
    parent = self()

    pid =
      spawn(fn ->
        {:ok, listen} =
          :ssl.listen(0,
            ip: {127, 0, 0, 1},
            certfile: String.to_charlist(certfile),
            keyfile: String.to_charlist(keyfile),
            mode: :binary,
            packet: :http_bin,
            active: false,
            reuseaddr: true
          )

        {:ok, {_, port}} = :ssl.sockname(listen)
        send(parent, {__MODULE__, :port, port})
        counter = :counters.new(1, [])
        acceptor = self()
        spawn_link(fn -> accept_loop(listen, dir, counter, acceptor) end)
        serve_owner(counter)
      end)

    receive do
      {__MODULE__, :port, port} -> %__MODULE__{port: port, pid: pid}
    after
      10_000 -> raise "the HTTPS server did not start"
    end
  end

  @doc "The base URL of the server."
  def url(%__MODULE__{port: port}), do: "https://localhost:#{port}"

  @doc "How many GET requests it has answered."
  def requests(%__MODULE__{pid: pid}) do
    ref = make_ref()
    send(pid, {:requests, self(), ref})

    receive do
      {^ref, count} -> count
    after
      5_000 -> raise "the HTTPS server does not answer"
    end
  end

  @doc "Stops the server: its port is closed when this returns."
  def stop(%__MODULE__{pid: pid}), do: DynamicSrv.Test.Wait.kill(pid)

  defp serve_owner(counter) do
    receive do
      {:requests, from, ref} ->
        send(from, {ref, :counters.get(counter, 1)})
        serve_owner(counter)
    end
  end

  defp accept_loop(listen, dir, counter, owner) do
    with {:ok, socket} <- :ssl.transport_accept(listen) do
      pid = spawn(fn -> handshake_and_serve(socket, dir, counter) end)
      # Connections die with the server.
      Process.link(pid)
      _ = :ssl.controlling_process(socket, pid)
      send(pid, :go)
      accept_loop(listen, dir, counter, owner)
    end
  end

  defp handshake_and_serve(socket, dir, counter) do
    receive do
      :go -> :ok
    end

    with {:ok, socket} <- :ssl.handshake(socket, 10_000),
         {:ok, {:http_request, :GET, {:abs_path, path}, _}} <- :ssl.recv(socket, 0, 10_000),
         :ok <- skip_headers(socket) do
      name = path |> URI.decode() |> Path.basename()

      case File.read(Path.join(dir, name)) do
        {:ok, body} ->
          :counters.add(counter, 1, 1)
          reply(socket, "200 OK", body)

        {:error, _} ->
          reply(socket, "404 Not Found", "")
      end
    end
  end

  defp skip_headers(socket) do
    case :ssl.recv(socket, 0, 10_000) do
      {:ok, :http_eoh} -> :ok
      {:ok, {:http_header, _, _, _, _}} -> skip_headers(socket)
      other -> other
    end
  end

  defp reply(socket, status, body) do
    :ok = :ssl.setopts(socket, packet: :raw)

    :ssl.send(socket, [
      "HTTP/1.1 #{status}\r\ncontent-length: #{byte_size(body)}\r\n",
      "content-type: application/octet-stream\r\nconnection: close\r\n\r\n",
      body
    ])

    :ssl.close(socket)
  end
end

defmodule DynamicSrv.PrecompiledTest do
  @moduledoc """
  The precompiled NIF as a user without Rust gets it. An artifact is made
  with the maintainers' `make precompile`, listed in the checksum file of a copy
  of the package (exactly `package[:files]`), and served by a loopback HTTPS
  server whose certificate a CA made for this run signs. A new mix
  application depending on that copy then compiles:

    * with no cargo anywhere on PATH or in HOME, downloading the artifact,
      and does a real SRV lookup through it;
    * again from the cache, with the server stopped;
    * not at all when the served artifact is tampered with, even with cargo
      there;
    * with cargo when the server is unreachable or DYNAMIC_SRV_NIF_BUILD is
      set, saying why.

  With `DYNAMIC_SRV_TEST_ARTIFACTS=<dir>` (`make test-matrix`) the artifact
  and checksum file are taken from `<dir>` instead, as made on another
  machine: the host's artifact loads on the chroot's OTP.
  """
  use ExUnit.Case, async: false

  alias DynamicSrv.Build.Precompiled
  alias DynamicSrv.Test.{Certs, DnsServer, HttpsServer, PackageCopy}

  @moduletag :dnsmasq
  @moduletag :openssl
  @moduletag :package
  @moduletag timeout: 900_000

  @cleared ~w(MIX_ENV MIX_TARGET MIX_EXS MIX_LOCKFILE MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH
              CARGO CARGO_HOME RUSTUP_HOME CARGO_TARGET_DIR ELIXIR_ERL_OPTIONS ERL_FLAGS ERL_ZFLAGS
              ERL_LIBS DYNAMIC_SRV_NAMESERVERS DYNAMIC_SRV_TIMEOUT_MS DYNAMIC_SRV_NIF_BUILD
              DYNAMIC_SRV_NIF_URL DYNAMIC_SRV_NIF_CACHE DYNAMIC_SRV_NIF_CACERTFILE
              HTTPS_PROXY https_proxy HTTP_PROXY http_proxy)

  setup_all do
    tmp = Path.join(System.tmp_dir!(), "precompiled_test_#{System.unique_integer([:positive])}")
    File.mkdir_p!(tmp)
    on_exit(fn -> File.rm_rf!(tmp) end)

    artifacts = Path.join(tmp, "artifacts")
    checksums = Path.join(artifacts, "checksums.exs")
    made_here? = make_artifact(artifacts, checksums)
    [artifact] = Path.wildcard(Path.join(artifacts, "*.so.tar.gz"))

    pkg = Path.join(tmp, "libcluster_dynamic_srv")
    PackageCopy.copy(pkg)
    File.cp!(checksums, Precompiled.checksum_path(pkg))

    Certs.make_ca(tmp, "ca", "DynamicSrv test download CA")
    Certs.make_cert(tmp, "server", "ca", ["localhost"])

    dns = DnsServer.start([{:srv, "lookup.test", "a.lookup.test", 1111}])
    on_exit(fn -> DnsServer.stop(dns) end)

    %{
      tmp: tmp,
      pkg: pkg,
      artifact: artifact,
      made_here?: made_here?,
      dns: dns,
      no_cargo_path: no_cargo_path(tmp)
    }
  end

  test "no cargo on PATH: the NIF is downloaded over HTTPS, verified, cached and used", ctx do
    server = serve(ctx, File.read!(ctx.artifact))
    {app, env} = new_app(ctx, "fetched", url: HttpsServer.url(server), path: ctx.no_cargo_path)

    {out, status} = mix(app, env, ["compile"])
    assert status == 0, out
    name = Path.basename(ctx.artifact)
    assert out =~ "Downloading the precompiled NIF from #{HttpsServer.url(server)}/#{name}"
    assert out =~ "Installed the precompiled NIF #{name}"
    refute out =~ "cargo"
    assert HttpsServer.requests(server) == 1
    assert File.read!(Path.join(cache(env), name)) == File.read!(ctx.artifact)

    # What was installed is the library in the artifact.
    {:ok, [{_, library}]} = :erl_tar.extract(ctx.artifact, [:memory, :compressed])
    assert File.read!(installed(app)) == library
    assert lookup(app, env, ctx.dns) =~ ~s|[{"a.lookup.test", 1111}]|

    # Compiled again: nothing fetched.
    {out, 0} = mix(app, env, ["compile"])
    refute out =~ "precompiled NIF"
    assert HttpsServer.requests(server) == 1
  end

  test "a second build takes the artifact from the cache, with the server stopped", ctx do
    server = serve(ctx, File.read!(ctx.artifact))
    {first, env} = new_app(ctx, "first", url: HttpsServer.url(server), path: ctx.no_cargo_path)
    {out, 0} = mix(first, env, ["compile"])
    assert out =~ "Downloading the precompiled NIF"
    HttpsServer.stop(server)

    {second, _} = new_app(ctx, "second", [])
    {out, status} = mix(second, env, ["compile"])
    assert status == 0, out
    assert out =~ "Using the precompiled NIF #{Path.basename(ctx.artifact)} from the cache"
    refute out =~ "Downloading"
    assert lookup(second, env, ctx.dns) =~ ~s|[{"a.lookup.test", 1111}]|
  end

  test "a tampered artifact is refused with both sums, also when cargo could build", ctx do
    good = File.read!(ctx.artifact)
    <<head::binary-size(100), byte, rest::binary>> = good
    tampered = <<head::binary, Bitwise.bxor(byte, 1), rest::binary>>
    server = serve(ctx, tampered)
    # cargo on PATH: the mismatch must not turn into a build.
    {app, env} = new_app(ctx, "tampered", url: HttpsServer.url(server), cargo_target: true)

    {out, status} = mix(app, env, ["compile"])
    assert status != 0
    name = Path.basename(ctx.artifact)
    assert out =~ "checksum mismatch for the precompiled NIF #{name}"
    assert out =~ "its SHA-256 is #{Precompiled.sha256(tampered)}"
    assert out =~ "checksum-Elixir.DynamicSrv.Native.exs lists #{Precompiled.sha256(good)}"
    assert out =~ "DYNAMIC_SRV_NIF_BUILD=1"
    refute out =~ "Compiling the dynamic_srv_nif NIF with cargo"
    refute File.exists?(installed(app))
    refute File.exists?(Path.join(cache(env), name))
  end

  test "an unreachable server: cargo builds it and says why; without cargo, both ways out", ctx do
    closed = "https://localhost:#{closed_port()}"
    {app, env} = new_app(ctx, "offline", url: closed, cargo_target: true)

    {out, status} = mix(app, env, ["compile"])
    assert status == 0, out
    assert out =~ "fetching #{closed}/#{Path.basename(ctx.artifact)} failed: cannot connect"
    assert out =~ "Building the NIF with cargo"
    assert out =~ "Compiling the dynamic_srv_nif NIF with cargo"
    assert lookup(app, env, ctx.dns) =~ ~s|[{"a.lookup.test", 1111}]|

    {app, env} = new_app(ctx, "stuck", url: closed, path: ctx.no_cargo_path)
    {out, status} = mix(app, env, ["compile"])
    assert status != 0
    assert out =~ "cargo is not found"
    assert out =~ "install a Rust toolchain"
    assert out =~ "set DYNAMIC_SRV_NIF_URL"
  end

  test "HTTPS_PROXY: the download goes through the proxy (CONNECT)", ctx do
    server = serve(ctx, File.read!(ctx.artifact))
    proxy = start_connect_proxy()

    {app, env} =
      new_app(ctx, "proxied",
        url: HttpsServer.url(server),
        path: ctx.no_cargo_path,
        extra: [{"HTTPS_PROXY", "http://127.0.0.1:#{proxy.port}"}]
      )

    {out, status} = mix(app, env, ["compile"])
    assert status == 0, out
    assert out =~ "Installed the precompiled NIF"
    assert_received {:proxied, "localhost:" <> port}
    assert port == Integer.to_string(server.port)
    assert HttpsServer.requests(server) == 1
  end

  test "DYNAMIC_SRV_NIF_BUILD=1 builds with cargo and fetches nothing", ctx do
    server = serve(ctx, File.read!(ctx.artifact))

    {app, env} =
      new_app(ctx, "forced",
        url: HttpsServer.url(server),
        cargo_target: true,
        extra: [{"DYNAMIC_SRV_NIF_BUILD", "1"}]
      )

    {out, status} = mix(app, env, ["compile"])
    assert status == 0, out
    assert out =~ "Building the NIF with cargo: DYNAMIC_SRV_NIF_BUILD is set"
    assert HttpsServer.requests(server) == 0
    assert lookup(app, env, ctx.dns) =~ ~s|[{"a.lookup.test", 1111}]|
  end

  test "the artifact is named by version, NIF version and target, as the checksum file says",
       ctx do
    {:ok, target} = Precompiled.target()
    {:ok, nif} = Precompiled.nif_version(File.cwd!())
    version = Mix.Project.config()[:version]

    assert Path.basename(ctx.artifact) ==
             "libdynamic_srv_nif-v#{version}-nif-#{nif}-#{target}.so.tar.gz"

    assert {:ok, %{} = sums} = Precompiled.read_checksums(Precompiled.checksum_path(ctx.pkg))

    assert sums[Path.basename(ctx.artifact)] ==
             "sha256:" <> Precompiled.sha256(File.read!(ctx.artifact))

    if ctx.made_here?, do: IO.puts("\nprecompiled_test: made #{Path.basename(ctx.artifact)}")
  end

  test "target triples from the VM's system architecture" do
    assert Precompiled.target("x86_64-pc-linux-gnu") == {:ok, "x86_64-unknown-linux-gnu"}
    assert Precompiled.target("aarch64-unknown-linux-gnu") == {:ok, "aarch64-unknown-linux-gnu"}
    assert Precompiled.target("x86_64-pc-linux-musl") == {:ok, "x86_64-unknown-linux-musl"}
    assert Precompiled.target("aarch64-alpine-linux-musl") == {:ok, "aarch64-unknown-linux-musl"}
    assert Precompiled.target("aarch64-apple-darwin23.4.0") == {:ok, "aarch64-apple-darwin"}
    assert Precompiled.target("x86_64-apple-darwin21.6.0") == {:ok, "x86_64-apple-darwin"}
    assert {:error, message} = Precompiled.target("riscv64-unknown-linux-gnu")
    assert message =~ "riscv64"
    assert {:error, _} = Precompiled.target("x86_64-pc-freebsd14.0")
  end

  test "the checksum file is read as data, never evaluated", ctx do
    path = Path.join(ctx.tmp, "evil.exs")
    marker = Path.join(ctx.tmp, "evaluated")
    File.write!(path, ~s|File.write!(#{inspect(marker)}, "x"); %{"a" => "sha256:00"}|)
    assert {:error, message} = Precompiled.read_checksums(path)
    assert message =~ "is not a map of artifact names"
    refute File.exists?(marker)

    File.write!(path, ~s|%{"a" => "sha256:00", "b" => "sha256:11"}\n|)
    assert Precompiled.read_checksums(path) == {:ok, %{"a" => "sha256:00", "b" => "sha256:11"}}
    # The package's own file parses too (empty until a release lists artifacts).
    assert {:ok, _} = Precompiled.read_checksums(Precompiled.checksum_path(File.cwd!()))
  end

  test "the release workflow parses and builds every target guides/installation.md names" do
    workflow = ".github/workflows/release.yml"

    {out, status} =
      System.cmd(
        "python3",
        [
          "-c",
          "import sys, yaml; w = yaml.safe_load(open(sys.argv[1])); " <>
            "print(' '.join(i['target'] for i in w['jobs']['nif']['strategy']['matrix']['include']))",
          workflow
        ],
        stderr_to_stdout: true
      )

    assert status == 0, out

    assert String.split(out) ==
             ~w(x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
             x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-apple-darwin aarch64-apple-darwin)

    guide = File.read!("guides/installation.md")
    for target <- String.split(out), do: assert(guide =~ target, target)
  end

  # The artifact and its checksum file in `dir`: made by the maintainers'
  # task in this checkout, or copied from DYNAMIC_SRV_TEST_ARTIFACTS.
  defp make_artifact(dir, checksums) do
    case System.get_env("DYNAMIC_SRV_TEST_ARTIFACTS") do
      nil ->
        {out, status} =
          System.cmd(
            "make",
            [
              "--no-print-directory",
              "precompile",
              "PRECOMPILE_ARGS=--out #{dir} --checksum-file #{checksums}"
            ],
            stderr_to_stdout: true
          )

        assert status == 0, out
        true

      given ->
        File.mkdir_p!(dir)
        for file <- File.ls!(given), do: File.cp!(Path.join(given, file), Path.join(dir, file))
        false
    end
  end

  defp serve(ctx, bytes) do
    dir = Path.join(ctx.tmp, "served_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    File.write!(Path.join(dir, Path.basename(ctx.artifact)), bytes)

    server =
      HttpsServer.start(dir, Path.join(ctx.tmp, "server.pem"), Path.join(ctx.tmp, "server.key"))

    on_exit(fn -> HttpsServer.stop(server) end)
    server
  end

  # A new application depending on the package copy, with its own HOME and
  # cache; `url:` the artifacts' base URL, `path:` the PATH to use,
  # `cargo_target:` cargo builds in this checkout's target directory (the
  # dependencies are built already), `extra:` more variables.
  defp new_app(ctx, name, opts) do
    app = Path.join(ctx.tmp, name)
    home = Path.join(app, "home")
    File.mkdir_p!(Path.join(app, "lib"))
    File.mkdir_p!(home)

    File.write!(Path.join(app, "mix.exs"), """
    defmodule App.MixProject do
      use Mix.Project
      def project, do: [app: :app, version: "0.1.0", deps: [{:libcluster_dynamic_srv, path: #{inspect(ctx.pkg)}}]]
    end
    """)

    env =
      Enum.map(@cleared, &{&1, nil}) ++
        [
          {"HOME", home},
          {"DYNAMIC_SRV_NIF_CACHE", Path.join(app, "cache")},
          {"DYNAMIC_SRV_NIF_CACERTFILE", Path.join(ctx.tmp, "ca.pem")},
          {"PATH", opts[:path] || System.get_env("PATH")}
        ] ++
        if(opts[:url], do: [{"DYNAMIC_SRV_NIF_URL", opts[:url]}], else: []) ++
        if(opts[:cargo_target],
          do: [
            {"CARGO_TARGET_DIR", Mix.Tasks.Compile.DynamicSrvNif.target_dir()},
            {"CARGO_HOME", System.get_env("CARGO_HOME") || Path.expand("~/.cargo")},
            {"RUSTUP_HOME", System.get_env("RUSTUP_HOME") || Path.expand("~/.rustup")}
          ],
          else: []
        ) ++ Keyword.get(opts, :extra, [])

    {app, env}
  end

  defp mix(app, env, args) do
    System.cmd("timeout", ["-s", "KILL", "900", "mix" | args],
      cd: app,
      env: env,
      stderr_to_stdout: true
    )
  end

  defp cache(env),
    do: env |> Enum.reverse() |> List.keyfind("DYNAMIC_SRV_NIF_CACHE", 0) |> elem(1)

  defp installed(app),
    do: Path.join(app, "_build/dev/lib/libcluster_dynamic_srv/priv/native/libdynamic_srv_nif.so")

  defp lookup(app, env, dns) do
    code = """
    {:ok, records} = DynamicSrv.Resolver.lookup_srv("lookup.test", nameservers: #{inspect(DnsServer.nameservers(dns))})
    IO.puts(inspect(for r <- records, do: {r.target, r.port}))
    """

    {out, status} = mix(app, env, ["run", "--no-start", "-e", code])
    assert status == 0, out
    out
  end

  # PATH without any directory holding a cargo (nor rustup's proxies).
  defp no_cargo_path(_tmp) do
    System.get_env("PATH")
    |> String.split(":", trim: true)
    |> Enum.reject(&File.exists?(Path.join(&1, "cargo")))
    |> Enum.join(":")
  end

  # An HTTP proxy on 127.0.0.1 that serves CONNECT only: it tells the test
  # each target it tunnels to, then relays bytes both ways.
  defp start_connect_proxy do
    test = self()

    {:ok, listen} =
      :gen_tcp.listen(0, [:binary, ip: {127, 0, 0, 1}, active: false, packet: :line])

    {:ok, port} = :inet.port(listen)

    pid =
      spawn(fn ->
        accept = fn accept ->
          {:ok, client} = :gen_tcp.accept(listen)
          {:ok, "CONNECT " <> rest} = :gen_tcp.recv(client, 0, 10_000)
          [target | _] = String.split(rest, " ")
          send(test, {:proxied, target})

          skip = fn skip ->
            if :gen_tcp.recv(client, 0, 10_000) == {:ok, "\r\n"}, do: :ok, else: skip.(skip)
          end

          skip.(skip)
          [host, target_port] = String.split(target, ":")

          {:ok, upstream} =
            :gen_tcp.connect(String.to_charlist(host), String.to_integer(target_port), [
              :binary,
              active: false
            ])

          :ok = :inet.setopts(client, packet: :raw)
          :ok = :gen_tcp.send(client, "HTTP/1.1 200 Connection established\r\n\r\n")

          relay = fn relay, from, to ->
            case :gen_tcp.recv(from, 0) do
              {:ok, data} ->
                _ = :gen_tcp.send(to, data)
                relay.(relay, from, to)

              {:error, _} ->
                :gen_tcp.close(to)
            end
          end

          spawn_link(fn -> relay.(relay, upstream, client) end)
          spawn_link(fn -> relay.(relay, client, upstream) end)
          accept.(accept)
        end

        accept.(accept)
      end)

    on_exit(fn -> Process.exit(pid, :kill) end)
    %{port: port, pid: pid}
  end

  defp closed_port do
    {:ok, socket} = :gen_tcp.listen(0, ip: {127, 0, 0, 1})
    {:ok, port} = :inet.port(socket)
    :gen_tcp.close(socket)
    port
  end
end
