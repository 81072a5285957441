defmodule DynamicSrv.Build.Precompiled do
  @moduledoc """
  Precompiled NIF libraries: which one this machine needs, where it comes
  from, and whether it is the one the package was released with.

  An artifact is a gzipped tar holding `libdynamic_srv_nif.so`, named by the
  package version, the NIF version the crate is built for and the target
  triple, as rustler_precompiled names them:

      libdynamic_srv_nif-v0.1.0-nif-2.15-x86_64-unknown-linux-gnu.so.tar.gz

  The package ships `checksum-Elixir.DynamicSrv.Native.exs`, a map of
  artifact name to `"sha256:<hex>"`; only a listed artifact is ever used,
  and only when its bytes have that SHA-256. Artifacts are kept in a cache
  per user and fetched from a base URL when missing there.

  | environment variable | effect | default |
  | --- | --- | --- |
  | `DYNAMIC_SRV_NIF_BUILD` | `1` or `true`: build with cargo, never fetch | unset |
  | `DYNAMIC_SRV_NIF_URL` | where artifacts are fetched: an `https://` or `http://` base URL, a `file://` URL or a local directory | the project's release downloads of this version |
  | `DYNAMIC_SRV_NIF_CACHE` | the cache directory | the user cache directory (`~/.cache/libcluster_dynamic_srv` on Linux) |
  | `DYNAMIC_SRV_NIF_CACERTFILE` | a PEM file of CA certificates for HTTPS | the system's (`:public_key.cacerts_get/0`) |
  | `DYNAMIC_SRV_NIF_TIMEOUT` | seconds a download may take | `120` |
  | `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` | proxies, as curl reads them (lower case too) | none |
  """

  alias DynamicSrv.Build.Download

  @crate "dynamic_srv_nif"
  @checksum_file "checksum-Elixir.DynamicSrv.Native.exs"
  @library "lib#{@crate}.so"
  @default_timeout_s 120

  @type settings :: %{
          force_build: boolean(),
          base_url: String.t(),
          cache_dir: String.t(),
          cacertfile: String.t() | nil,
          timeout_ms: pos_integer(),
          env: %{String.t() => String.t()}
        }
  @type artifact :: %{name: String.t(), sha256: String.t()}

  @doc "The checksum file of the package whose sources are in `root`."
  @spec checksum_path(Path.t()) :: Path.t()
  def checksum_path(root), do: Path.join(root, @checksum_file)

  @doc """
  The settings from the environment `env` (a map of variable to value);
  `default_url` is the release downloads of this version.
  """
  @spec settings(%{String.t() => String.t()}, String.t()) :: settings()
  def settings(env, default_url) do
    %{
      force_build: env["DYNAMIC_SRV_NIF_BUILD"] in ["1", "true", "yes"],
      base_url: blank_to_nil(env["DYNAMIC_SRV_NIF_URL"]) || default_url,
      cache_dir:
        blank_to_nil(env["DYNAMIC_SRV_NIF_CACHE"]) ||
          :filename.basedir(:user_cache, "libcluster_dynamic_srv") |> to_string(),
      cacertfile: blank_to_nil(env["DYNAMIC_SRV_NIF_CACERTFILE"]),
      timeout_ms: timeout_ms(env["DYNAMIC_SRV_NIF_TIMEOUT"]),
      env: env
    }
  end

  defp timeout_ms(nil), do: @default_timeout_s * 1_000

  defp timeout_ms(text) do
    case Integer.parse(text) do
      {seconds, ""} when seconds > 0 ->
        seconds * 1_000

      _ ->
        Mix.raise(
          "DYNAMIC_SRV_NIF_TIMEOUT=#{inspect(text)} is not a number of seconds; set it to a positive integer such as 120, or unset it"
        )
    end
  end

  defp blank_to_nil(nil), do: nil
  defp blank_to_nil(text), do: if(String.trim(text) == "", do: nil, else: text)

  @doc """
  The target triple of the running VM, from its system architecture
  (`:erlang.system_info(:system_architecture)`): architecture, OS, and on
  Linux gnu or musl.
  """
  @spec target(String.t()) :: {:ok, String.t()} | {:error, String.t()}
  def target(arch \\ to_string(:erlang.system_info(:system_architecture))) do
    case String.split(arch, "-") do
      [cpu | rest] when cpu in ["x86_64", "aarch64", "arm64"] ->
        cpu = if cpu == "arm64", do: "aarch64", else: cpu
        os_target(cpu, Enum.join(rest, "-"), arch)

      _ ->
        {:error, "no precompiled NIF is made for the architecture #{arch}"}
    end
  end

  defp os_target(cpu, rest, arch) do
    cond do
      rest =~ "linux" and rest =~ "musl" -> {:ok, "#{cpu}-unknown-linux-musl"}
      rest =~ "linux" -> {:ok, "#{cpu}-unknown-linux-gnu"}
      rest =~ "darwin" -> {:ok, "#{cpu}-apple-darwin"}
      true -> {:error, "no precompiled NIF is made for the system #{arch}"}
    end
  end

  @doc """
  The NIF version the crate is built for: the `nif_version_X_Y` feature of
  rustler in `native/dynamic_srv_nif/Cargo.toml` (the one place it is set).
  """
  @spec nif_version(Path.t()) :: {:ok, String.t()} | {:error, String.t()}
  def nif_version(root) do
    manifest = Path.join([root, "native", @crate, "Cargo.toml"])

    with {:ok, text} <- File.read(manifest),
         [_, major, minor] <- Regex.run(~r/"nif_version_(\d+)_(\d+)"/, text) do
      {:ok, "#{major}.#{minor}"}
    else
      _ -> {:error, "#{manifest} names no nif_version_X_Y feature of rustler"}
    end
  end

  @doc "The artifact's file name."
  @spec artifact_name(String.t(), String.t(), String.t()) :: String.t()
  def artifact_name(version, nif_version, target),
    do: "lib#{@crate}-v#{version}-nif-#{nif_version}-#{target}.so.tar.gz"

  @doc """
  What to install for the package in `root`, version `version`:
  `{:fetch, artifact}` when the checksum file lists this machine's artifact,
  else `{:build, why}`.
  """
  @spec plan(Path.t(), String.t(), settings()) :: {:fetch, artifact()} | {:build, String.t()}
  def plan(root, version, settings) do
    with :ok <- not_forced(settings),
         {:ok, target} <- target(),
         {:ok, nif} <- nif_version(root),
         :ok <- vm_supports(nif),
         {:ok, sums} <- read_checksums(checksum_path(root)) do
      name = artifact_name(version, nif, target)

      case sums do
        %{^name => "sha256:" <> sha} -> {:fetch, %{name: name, sha256: sha}}
        _ -> {:build, "#{@checksum_file} lists no precompiled NIF for #{target} (#{name})"}
      end
    else
      {:error, why} -> {:build, why}
    end
  end

  defp not_forced(%{force_build: true}), do: {:error, "DYNAMIC_SRV_NIF_BUILD is set"}
  defp not_forced(_settings), do: :ok

  defp vm_supports(nif) do
    if version_tuple(to_string(:erlang.system_info(:nif_version))) >= version_tuple(nif),
      do: :ok,
      else: {:error, "this VM's NIF version is older than #{nif}, the precompiled NIF's"}
  end

  defp version_tuple(text),
    do: text |> String.split(".") |> Enum.map(&String.to_integer/1) |> List.to_tuple()

  @doc """
  The checksum file as a map of artifact name to `"sha256:<hex>"`. Read as
  data (never evaluated): a map of string keys and values.
  """
  @spec read_checksums(Path.t()) :: {:ok, %{String.t() => String.t()}} | {:error, String.t()}
  def read_checksums(path) do
    with {:ok, text} <- read_file(path),
         {:ok, {:%{}, _, pairs}} <- Code.string_to_quoted(text),
         true <- Enum.all?(pairs, &match?({k, v} when is_binary(k) and is_binary(v), &1)) do
      {:ok, Map.new(pairs)}
    else
      {:error, message} when is_binary(message) ->
        {:error, message}

      _ ->
        {:error,
         "#{path} is not a map of artifact names to \"sha256:<hex>\"; restore it from the package"}
    end
  end

  defp read_file(path) do
    case File.read(path) do
      {:ok, text} -> {:ok, text}
      {:error, :enoent} -> {:error, "the package has no #{@checksum_file}"}
      {:error, reason} -> {:error, "#{path}: #{:file.format_error(reason)}"}
    end
  end

  @doc "Writes the checksum file: one artifact per line, sorted."
  @spec write_checksums(Path.t(), %{String.t() => String.t()}) :: :ok
  def write_checksums(path, sums) do
    lines = for {name, sum} <- Enum.sort(sums), do: "  #{inspect(name)} => #{inspect(sum)},\n"
    File.write!(path, "%{\n" <> Enum.join(lines) <> "}\n")
  end

  @doc """
  The artifact's bytes: from the cache if there, else fetched from the base
  URL and cached. `{:error, {:mismatch, message}}` when the bytes are not
  the released ones (never to be worked around silently);
  `{:error, {:unavailable, why}}` when they cannot be had.
  """
  @spec fetch(artifact(), settings()) ::
          {:ok, binary()} | {:error, {:mismatch, String.t()} | {:unavailable, String.t()}}
  def fetch(artifact, settings) do
    cached = Path.join(settings.cache_dir, artifact.name)

    case File.read(cached) do
      {:ok, bytes} ->
        Mix.shell().info("Using the precompiled NIF #{artifact.name} from the cache #{cached}")
        verify(bytes, artifact, "the cached file #{cached}", "delete it")

      {:error, _} ->
        url = String.trim_trailing(settings.base_url, "/") <> "/" <> artifact.name

        with {:ok, bytes} <- download(url, settings),
             {:ok, bytes} <-
               verify(bytes, artifact, url, "check DYNAMIC_SRV_NIF_URL and the mirror's copy") do
          store(cached, bytes)
          {:ok, bytes}
        end
    end
  end

  defp download(url, settings) do
    case Download.get(url, settings) do
      {:ok, bytes} -> {:ok, bytes}
      {:error, why} -> {:error, {:unavailable, "fetching #{url} failed: #{why}"}}
    end
  end

  defp verify(bytes, artifact, source, fix) do
    case sha256(bytes) do
      sha when sha == artifact.sha256 ->
        {:ok, bytes}

      sha ->
        {:error,
         {:mismatch,
          "checksum mismatch for the precompiled NIF #{artifact.name} from #{source}: " <>
            "its SHA-256 is #{sha}, #{@checksum_file} lists #{artifact.sha256}. " <>
            "It is not the file this package version was released with, and it is not used: " <>
            "#{fix}, or build with cargo (DYNAMIC_SRV_NIF_BUILD=1)"}}
    end
  end

  # Written whole, then renamed: a concurrent build never reads half a file.
  defp store(path, bytes) do
    tmp = "#{path}.#{System.unique_integer([:positive])}.tmp"

    with :ok <- File.mkdir_p(Path.dirname(path)),
         :ok <- File.write(tmp, bytes),
         :ok <- File.rename(tmp, path) do
      :ok
    else
      {:error, reason} ->
        File.rm(tmp)

        Mix.shell().info(
          "Not caching the precompiled NIF in #{path}: #{:file.format_error(reason)}"
        )
    end
  end

  @doc "The SHA-256 of `bytes`, in lower-case hex."
  @spec sha256(binary()) :: String.t()
  def sha256(bytes), do: Base.encode16(:crypto.hash(:sha256, bytes), case: :lower)

  @doc "Unpacks the library from an artifact's bytes into `dest`."
  @spec unpack(binary(), Path.t()) :: :ok | {:error, String.t()}
  def unpack(bytes, dest) do
    case :erl_tar.extract({:binary, bytes}, [:memory, :compressed]) do
      {:ok, files} ->
        case List.keyfind(files, ~c"#{@library}", 0) do
          {_, library} ->
            File.mkdir_p!(Path.dirname(dest))
            # The VM may hold the old library mapped: a new file, not an overwrite.
            File.rm(dest)
            File.write!(dest, library)

          nil ->
            {:error, "the artifact holds no #{@library}"}
        end

      {:error, reason} ->
        {:error, "the artifact is not a gzipped tar: #{inspect(reason)}"}
    end
  end

  @doc """
  Packs `library` as the artifact `name` in `out_dir`; returns its path and
  its SHA-256.
  """
  @spec pack(Path.t(), Path.t(), String.t()) :: {Path.t(), String.t()}
  def pack(library, out_dir, name) do
    File.mkdir_p!(out_dir)
    path = Path.join(out_dir, name)
    File.rm(path)

    :ok =
      :erl_tar.create(String.to_charlist(path), [{~c"#{@library}", File.read!(library)}], [
        :compressed
      ])

    {path, sha256(File.read!(path))}
  end
end
