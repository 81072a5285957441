defmodule Mix.Tasks.Compile.DynamicSrvNif do
  @shortdoc "Builds the Rust NIF of libcluster_dynamic_srv with cargo"
  @moduledoc """
  Compiler step that puts the Rust NIF of `native/dynamic_srv_nif` into the
  application's `priv/native/` directory: a precompiled library when the
  package's checksum file lists one for this machine (see
  `DynamicSrv.Build.Precompiled`), else one built with
  `cargo build --release`.

  It is listed first in the project's `:compilers`, so a plain `mix compile`
  (also when the package is a dependency) installs the NIF. It never writes
  into the package's own directory, which may be read-only when the package
  is a dependency: cargo builds under the application's build path, and the
  record of what was installed is a Mix manifest there too.

  A precompiled library is installed when the manifest records another one
  or the library is missing. A checksum mismatch stops the build. When
  there is no precompiled library for this machine, or it cannot be
  fetched, cargo builds it, and the step says why first; without cargo it
  stops with one message naming both ways out.

  Cargo runs when the library is missing, when the SHA-256 of any Rust
  source, `Cargo.toml` or `Cargo.lock` differs from the last build's (file
  contents, not modification times: an edit within the same second as the
  build is seen), or with `mix compile --force`.

  | environment variable | effect |
  | --- | --- |
  | `CARGO` | the cargo executable to use (default: `cargo` on `PATH`, then `~/.cargo/bin/cargo`) |
  | `CARGO_TARGET_DIR` | where cargo builds (default: `native/target` in the application's build directory, e.g. `_build/dev/lib/libcluster_dynamic_srv/native/target`) |
  | `DYNAMIC_SRV_NIF_*` | the precompiled library: see `DynamicSrv.Build.Precompiled` |
  """
  use Mix.Task.Compiler

  @crate "dynamic_srv_nif"
  @manifest "compile.dynamic_srv_nif"

  alias DynamicSrv.Build.Precompiled

  @impl true
  def run(args) do
    config = Mix.Project.config()

    compile(File.cwd!(), Mix.Project.app_path(), Mix.Project.manifest_path(),
      force: "--force" in args,
      version: config[:version],
      download_url: config[:nif_download_url]
    )
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
  # manifests of it in `manifest_dir`. Options: `force` runs cargo in any
  # case (`mix compile --force`; cargo itself skips what is fresh) or
  # installs the precompiled library again; `version` and `download_url`
  # (the project's); `env`, the environment (default: the process's).
  def compile(root, app_path, manifest_dir, opts \\ []) do
    env = Keyword.get_lazy(opts, :env, &System.get_env/0)
    settings = Precompiled.settings(env, opts[:download_url] || "")
    dest = installed_library(app_path)
    manifest = Path.join(manifest_dir, @manifest)
    force? = Keyword.get(opts, :force, false)

    case Precompiled.plan(root, opts[:version] || "0.0.0", settings) do
      {:fetch, artifact} ->
        stamp = "precompiled #{artifact.name} sha256:#{artifact.sha256}\n"

        if not force? and File.exists?(dest) and File.read(manifest) == {:ok, stamp},
          do: {:noop, []},
          else:
            install_precompiled(
              root,
              app_path,
              artifact,
              settings,
              {dest, manifest, stamp},
              force?
            )

      {:build, why} ->
        cargo_build(root, app_path, dest, manifest, force?, why)
    end
  end

  defp install_precompiled(root, app_path, artifact, settings, {dest, manifest, stamp}, force?) do
    case Precompiled.fetch(artifact, settings) do
      {:ok, bytes} ->
        case Precompiled.unpack(bytes, dest) do
          :ok ->
            record(manifest, stamp)
            Mix.shell().info("Installed the precompiled NIF #{artifact.name}")
            {:ok, []}

          {:error, why} ->
            Mix.raise("the precompiled NIF #{artifact.name} is unusable: #{why}")
        end

      {:error, {:mismatch, message}} ->
        Mix.raise(message)

      {:error, {:unavailable, why}} ->
        cargo_build(root, app_path, dest, manifest, force?, why)
    end
  end

  defp cargo_build(root, app_path, dest, manifest, force?, why) do
    digest = sources_digest(root)

    if not force? and File.exists?(dest) and File.read(manifest) == {:ok, digest} do
      {:noop, []}
    else
      cargo = cargo_executable(why)
      Mix.shell().info("Building the NIF with cargo: #{why}")
      build(cargo, root, target_dir(app_path), dest)
      record(manifest, digest)
      {:ok, []}
    end
  end

  defp record(manifest, text) do
    File.mkdir_p!(Path.dirname(manifest))
    File.write!(manifest, text)
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

  @doc false
  # Builds the release library with `cargo` in `target_dir`; its path.
  def build_release(cargo, root, target_dir) do
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
        Path.join([target_dir, "release", built])

      {_, status} ->
        Mix.raise("cargo build of the #{@crate} NIF failed (exit status #{status})")
    end
  end

  defp build(cargo, root, target_dir, dest),
    do: install(build_release(cargo, root, target_dir), dest)

  # The VM may hold the old library mapped: remove it and copy a new file
  # instead of overwriting it in place.
  defp install(built, dest) do
    File.mkdir_p!(Path.dirname(dest))
    File.rm(dest)
    File.cp!(built, dest)
  end

  @doc false
  # The cargo to run; `why` says why it is needed, for the message when
  # there is none.
  def cargo_executable(why) do
    candidates = [
      System.get_env("CARGO"),
      System.find_executable("cargo"),
      Path.expand("~/.cargo/bin/cargo")
    ]

    Enum.find(candidates, &(is_binary(&1) and File.regular?(&1))) ||
      Mix.raise(
        "libcluster_dynamic_srv's NIF cannot be installed: #{why}, and cargo is not found. " <>
          "Either install a Rust toolchain (1.91 or newer, e.g. with rustup) to build it, " <>
          "or set DYNAMIC_SRV_NIF_URL to a mirror or directory holding the precompiled NIF of this release"
      )
  end
end
