defmodule Mix.Tasks.DynamicSrvNif.Precompile do
  @shortdoc "Builds and packs the precompiled NIF for this host, updating the checksum file"
  @moduledoc """
  For maintainers cutting a release (`make precompile`): builds the NIF
  with `cargo build --release` for this host's target, packs it under its
  artifact name (see `DynamicSrv.Build.Precompiled`) and writes its SHA-256
  into the checksum file, keeping the other targets' lines.

      mix dynamic_srv_nif.precompile [--out DIR] [--checksum-file FILE]

  | option | meaning | default |
  | --- | --- | --- |
  | `--out` | where the artifact is written | `_build/precompiled` |
  | `--checksum-file` | the checksum file to update | the package's `checksum-Elixir.DynamicSrv.Native.exs` |

  Prints the artifact's path and SHA-256.
  """
  use Mix.Task

  alias DynamicSrv.Build.Precompiled
  alias Mix.Tasks.Compile.DynamicSrvNif

  @impl true
  def run(args) do
    {opts, _} = OptionParser.parse!(args, strict: [out: :string, checksum_file: :string])
    root = File.cwd!()
    out = opts[:out] || Path.join(Mix.Project.build_path() |> Path.dirname(), "precompiled")
    checksum_file = opts[:checksum_file] || Precompiled.checksum_path(root)

    with {:ok, target} <- Precompiled.target(),
         {:ok, nif} <- Precompiled.nif_version(root),
         {:ok, sums} <- existing_sums(checksum_file) do
      cargo = DynamicSrvNif.cargo_executable("make precompile builds it")
      library = DynamicSrvNif.build_release(cargo, root, DynamicSrvNif.target_dir())
      name = Precompiled.artifact_name(Mix.Project.config()[:version], nif, target)
      {path, sha} = Precompiled.pack(library, out, name)
      Precompiled.write_checksums(checksum_file, Map.put(sums, name, "sha256:" <> sha))
      Mix.shell().info("#{path}\nsha256:#{sha} (written to #{checksum_file})")
    else
      {:error, why} -> Mix.raise("cannot precompile the NIF: #{why}")
    end
  end

  defp existing_sums(file) do
    if File.exists?(file), do: Precompiled.read_checksums(file), else: {:ok, %{}}
  end
end
