defmodule Mix.Tasks.Compile.DynamicSrvNif do
  @shortdoc "Builds the Rust NIF of libcluster_dynamic_srv with cargo"
  @moduledoc """
  Compiler step that builds the Rust NIF in `native/dynamic_srv_nif` with
  `cargo build --release` and copies the shared library into the
  application's `priv/native/` directory.

  It is listed first in the project's `:compilers`, so a plain `mix compile`
  (also when the package is a dependency) builds the NIF. Cargo is only run
  when a Rust source, manifest or lock file is newer than the copied library.

  | environment variable | effect |
  | --- | --- |
  | `CARGO` | the cargo executable to use (default: `cargo` on `PATH`, then `~/.cargo/bin/cargo`) |
  | `CARGO_TARGET_DIR` | where cargo builds (default: `target/` in the package) |
  """
  use Mix.Task.Compiler

  @crate "dynamic_srv_nif"

  @impl true
  def run(_args) do
    root = File.cwd!()
    dest = Path.join([Mix.Project.app_path(), "priv", "native", "lib#{@crate}.so"])

    if stale?(root, dest) do
      build(root, dest)
    else
      {:noop, []}
    end
  end

  @impl true
  def clean do
    File.rm_rf(Path.join([Mix.Project.app_path(), "priv", "native"]))
    :ok
  end

  defp build(root, dest) do
    cargo = cargo_executable()
    Mix.shell().info("Compiling the #{@crate} NIF with cargo (release)")

    args = [
      "build",
      "--release",
      "--manifest-path",
      Path.join([root, "native", @crate, "Cargo.toml"])
    ]

    case System.cmd(cargo, args, cd: root, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} ->
        target_dir = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
        install(Path.join([target_dir, "release", "lib#{@crate}.so"]), dest)
        {:ok, []}

      {_, status} ->
        Mix.raise("cargo build of the #{@crate} NIF failed (exit status #{status})")
    end
  end

  # The VM may hold the old library mapped: remove it and copy a new file
  # instead of overwriting it in place.
  defp install(built, dest) do
    File.mkdir_p!(Path.dirname(dest))
    File.rm(dest)
    File.cp!(built, dest)
  end

  defp cargo_executable do
    candidates = [
      System.get_env("CARGO"),
      System.find_executable("cargo"),
      Path.expand("~/.cargo/bin/cargo")
    ]

    Enum.find(candidates, &(is_binary(&1) and File.regular?(&1))) ||
      Mix.raise(
        "cargo not found: install a Rust toolchain (1.91 or newer, e.g. with rustup) to build libcluster_dynamic_srv's NIF"
      )
  end

  defp stale?(root, dest) do
    sources =
      Path.wildcard(Path.join([root, "native", "**", "*.{rs,toml}"])) ++
        Enum.filter(
          [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")],
          &File.exists?/1
        )

    case File.stat(dest, time: :posix) do
      {:ok, %{mtime: built}} ->
        Enum.any?(sources, fn src -> File.stat!(src, time: :posix).mtime > built end)

      {:error, _} ->
        true
    end
  end
end

defmodule LibclusterDynamicSrv.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :libcluster_dynamic_srv,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:dynamic_srv_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      package: package(),
      description:
        "DNS SRV clustering for Erlang/Elixir nodes on dynamically assigned distribution ports, " <>
          "with no epmd daemon; DNS work done by a Rust NIF"
    ]
  end

  def application do
    [
      extra_applications: [:logger, :crypto],
      mod: {DynamicSrv.Application, []}
    ]
  end

  # test/support (real dnsmasq and node processes) also serves `make demo`
  # and `make bench`; it is never part of the package.
  defp elixirc_paths(:prod), do: ["lib"]
  defp elixirc_paths(_), do: ["lib", "test/support"]

  defp package do
    [
      files: ~w(
        lib
        native/dynamic_srv_core/Cargo.toml native/dynamic_srv_core/src
        native/dynamic_srv_nif/Cargo.toml native/dynamic_srv_nif/src
        Cargo.toml Cargo.lock
        mix.exs .formatter.exs README.md LICENSE
      ),
      licenses: ["Apache-2.0"]
    ]
  end
end
