defmodule Mix.Tasks.Compile.DynamicSrvNif do
  @shortdoc "Builds the Rust NIF of libcluster_dynamic_srv with cargo"
  @moduledoc """
  Compiler step that builds the Rust NIF in `native/dynamic_srv_nif` with
  `cargo build --release` and copies the shared library into the
  application's `priv/native/` directory.

  It is listed first in the project's `:compilers`, so a plain `mix compile`
  (also when the package is a dependency) builds the NIF. It never writes
  into the package's own directory, which may be read-only when the package
  is a dependency: cargo builds under the application's build path, and the
  record of what was built is a Mix manifest there too.

  Cargo runs when the library is missing, when the SHA-256 of any Rust
  source, `Cargo.toml` or `Cargo.lock` differs from the last build's (file
  contents, not modification times: an edit within the same second as the
  build is seen), or with `mix compile --force`.

  | environment variable | effect |
  | --- | --- |
  | `CARGO` | the cargo executable to use (default: `cargo` on `PATH`, then `~/.cargo/bin/cargo`) |
  | `CARGO_TARGET_DIR` | where cargo builds (default: `native/target` in the application's build directory, e.g. `_build/dev/lib/libcluster_dynamic_srv/native/target`) |
  """
  use Mix.Task.Compiler

  @crate "dynamic_srv_nif"
  @manifest "compile.dynamic_srv_nif"

  @impl true
  def run(args) do
    compile(File.cwd!(), Mix.Project.app_path(), Mix.Project.manifest_path(), "--force" in args)
  end

  @impl true
  def manifests, do: [Path.join(Mix.Project.manifest_path(), @manifest)]

  @impl true
  def clean do
    File.rm_rf(Path.dirname(installed_library(Mix.Project.app_path())))
    Enum.each(manifests(), &File.rm/1)
    :ok
  end

  @doc false
  # The package's sources in `root`, its build in `app_path`, Mix's
  # manifests of it in `manifest_dir`; `force?` runs cargo in any case
  # (`mix compile --force`; cargo itself skips what is fresh).
  def compile(root, app_path, manifest_dir, force? \\ false) do
    dest = installed_library(app_path)
    manifest = Path.join(manifest_dir, @manifest)
    digest = sources_digest(root)

    if not force? and File.exists?(dest) and File.read(manifest) == {:ok, digest} do
      {:noop, []}
    else
      build(root, target_dir(app_path), dest)
      File.mkdir_p!(manifest_dir)
      File.write!(manifest, digest)
      {:ok, []}
    end
  end

  @doc """
  The library cargo builds and the name it is installed under, for an OS
  type as `:os.type/0` gives it. The BEAM loads `<path>.so` on every Unix,
  macOS included, where cargo names a cdylib `.dylib`.
  """
  def library_names({:unix, :darwin}), do: {"lib#{@crate}.dylib", "lib#{@crate}.so"}
  def library_names({:unix, _}), do: {"lib#{@crate}.so", "lib#{@crate}.so"}

  def library_names(os_type),
    do: Mix.raise("libcluster_dynamic_srv's NIF is built for Unix only, not #{inspect(os_type)}")

  @doc "Where cargo builds: `CARGO_TARGET_DIR`, else under the application's build directory."
  def target_dir(app_path \\ Mix.Project.app_path()) do
    System.get_env("CARGO_TARGET_DIR") || Path.join([app_path, "native", "target"])
  end

  @doc """
  The SHA-256 of every file of the Rust build under `root`, one
  `<hex digest>  <path>` line per file in path order (so an added, removed
  or renamed file changes it too).
  """
  def sources_digest(root) do
    root
    |> rust_sources()
    |> Enum.map_join(fn path ->
      hash = :crypto.hash(:sha256, File.read!(Path.join(root, path)))
      Base.encode16(hash, case: :lower) <> "  " <> path <> "\n"
    end)
  end

  # Cargo.toml and Cargo.lock of the workspace, and the manifests and
  # sources of its crates (not the fuzz workspace, nor any target/).
  defp rust_sources(root) do
    crates =
      for path <- Path.wildcard(Path.join(root, "native/**/*.{rs,toml}")),
          relative = Path.relative_to(path, root),
          not String.contains?(relative, ["/fuzz/", "/target/"]),
          do: relative

    top = Enum.filter(["Cargo.toml", "Cargo.lock"], &File.regular?(Path.join(root, &1)))
    Enum.sort(top ++ crates)
  end

  defp installed_library(app_path) do
    {_built, installed} = library_names(:os.type())
    Path.join([app_path, "priv", "native", installed])
  end

  defp build(root, target_dir, dest) do
    cargo = cargo_executable()
    Mix.shell().info("Compiling the #{@crate} NIF with cargo (release) in #{target_dir}")

    args = [
      "build",
      "--release",
      "--manifest-path",
      Path.join([root, "native", @crate, "Cargo.toml"]),
      "--target-dir",
      target_dir
    ]

    case System.cmd(cargo, args, cd: root, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} ->
        {built, _installed} = library_names(:os.type())
        install(Path.join([target_dir, "release", built]), dest)

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
