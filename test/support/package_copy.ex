defmodule DynamicSrv.Test.PackageCopy do
  @moduledoc """
  The package as `mix hex.build` would ship it: exactly the files of
  `package[:files]` in mix.exs, copied into a directory.
  """

  @doc "Copies the package's files under `dest`; their paths relative to the project."
  def copy(dest) do
    files =
      for entry <- Mix.Project.config()[:package][:files],
          path <- Path.wildcard(entry, match_dot: true),
          file <- expand(path),
          uniq: true,
          do: file

    for file <- files do
      File.mkdir_p!(Path.dirname(Path.join(dest, file)))
      File.cp!(file, Path.join(dest, file))
    end

    files
  end

  defp expand(path) do
    if File.dir?(path),
      do:
        path |> Path.join("**") |> Path.wildcard(match_dot: true) |> Enum.filter(&File.regular?/1),
      else: [path]
  end
end
