defmodule DynamicSrv.Build.Download do
  @moduledoc """
  Gets one file for the NIF build: over HTTPS with the peer's certificate
  verified (the system's CA certificates, or the PEM file of
  `DYNAMIC_SRV_NIF_CACERTFILE`), over plain HTTP, or from a `file://` URL or
  a local directory (mirrors, air-gapped builds). Honours `HTTPS_PROXY`,
  `HTTP_PROXY` and `NO_PROXY` (also in lower case), follows redirects (the
  release downloads of a forge redirect to storage), and gives up after the
  settings' timeout. Prints one line when it starts and one when it ends.
  """

  @profile :dynamic_srv_nif

  @doc "The bytes at `url`, or why not, in words."
  @spec get(String.t(), map()) :: {:ok, binary()} | {:error, String.t()}
  def get(url, settings) do
    case URI.parse(url) do
      %URI{scheme: scheme} = uri when scheme in ["http", "https"] ->
        http_get(uri, settings)

      %URI{scheme: "file", path: path} ->
        read(path)

      %URI{scheme: nil} ->
        read(url)

      %URI{scheme: scheme} ->
        {:error, "#{scheme}: URLs are not supported (use https, http or file)"}
    end
  end

  defp read(path) do
    case File.read(path) do
      {:ok, bytes} ->
        Mix.shell().info("Copied the precompiled NIF from #{path} (#{byte_size(bytes)} bytes)")
        {:ok, bytes}

      {:error, reason} ->
        {:error, "#{path}: #{:file.format_error(reason)}"}
    end
  end

  defp http_get(uri, settings) do
    with :ok <- start_otp_app(:inets),
         :ok <- start_otp_app(:ssl),
         :ok <- start_profile(),
         :ok <- set_proxies(settings.env),
         {:ok, ssl} <- ssl_options(uri, settings) do
      Mix.shell().info(
        "Downloading the precompiled NIF from #{URI.to_string(uri)} (timeout #{div(settings.timeout_ms, 1_000)} s)"
      )

      started = System.monotonic_time(:millisecond)

      http = [
        timeout: settings.timeout_ms,
        connect_timeout: min(settings.timeout_ms, 15_000),
        autoredirect: true,
        ssl: ssl
      ]

      request =
        {String.to_charlist(URI.to_string(uri)), [{~c"user-agent", ~c"libcluster_dynamic_srv"}]}

      case :httpc.request(:get, request, http, [body_format: :binary], @profile) do
        {:ok, {{_, 200, _}, _headers, body}} ->
          ms = System.monotonic_time(:millisecond) - started
          Mix.shell().info("Downloaded #{byte_size(body)} bytes in #{ms} ms")
          {:ok, body}

        {:ok, {{_, status, reason}, _headers, _body}} ->
          {:error, "the server answered #{status} #{reason}"}

        {:error, reason} ->
          {:error, describe(reason)}
      end
    else
      {:error, why} when is_binary(why) -> {:error, why}
      {:error, reason} -> {:error, inspect(reason)}
    end
  end

  @doc """
  Starts an application of Erlang/OTP that the project does not list: from
  Elixir 1.15 on, Mix keeps only the listed ones in the code path (and
  `Mix.ensure_application!/1` puts one back).
  """
  @spec start_otp_app(atom()) :: :ok | {:error, String.t()}
  def start_otp_app(app) do
    # Called through apply: Elixir 1.14 has no Mix.ensure_application!/1
    # (and needs none).
    if function_exported?(Mix, :ensure_application!, 1),
      do: apply(Mix, :ensure_application!, [app])

    case Application.ensure_all_started(app) do
      {:ok, _} ->
        :ok

      {:error, reason} ->
        {:error,
         "Erlang/OTP's #{app} application cannot start (#{inspect(reason)}); install it (Debian: erlang-#{app})"}
    end
  end

  defp start_profile do
    case :inets.start(:httpc, profile: @profile) do
      {:ok, _} -> :ok
      {:error, {:already_started, _}} -> :ok
      {:error, reason} -> {:error, "cannot start an HTTP client: #{inspect(reason)}"}
    end
  end

  defp set_proxies(env) do
    no_proxy =
      (env["NO_PROXY"] || env["no_proxy"] || "")
      |> String.split(",", trim: true)
      |> Enum.map(&String.to_charlist(String.trim(&1)))

    options =
      [
        proxy: env["HTTP_PROXY"] || env["http_proxy"],
        https_proxy: env["HTTPS_PROXY"] || env["https_proxy"]
      ]
      |> Enum.flat_map(fn
        {_, nil} -> []
        {key, url} -> proxy_option(key, url, no_proxy)
      end)

    :httpc.set_options(options, @profile)
  end

  defp proxy_option(key, url, no_proxy) do
    case URI.parse(url) do
      %URI{host: host, port: port} when is_binary(host) and host != "" ->
        [{key, {{String.to_charlist(host), port || 80}, no_proxy}}]

      _ ->
        Mix.raise(
          "#{key |> Atom.to_string() |> String.upcase()}=#{inspect(url)} is not a proxy URL such as http://proxy.example:3128"
        )
    end
  end

  defp ssl_options(%URI{scheme: "http"}, _settings), do: {:ok, []}

  defp ssl_options(%URI{host: host}, settings) do
    with {:ok, cas} <- ca_option(settings.cacertfile) do
      {:ok,
       [
         verify: :verify_peer,
         depth: 4,
         server_name_indication: String.to_charlist(host),
         customize_hostname_check: [
           match_fun: :public_key.pkix_verify_hostname_match_fun(:https)
         ]
       ] ++ cas}
    end
  end

  defp ca_option(nil) do
    {:ok, [cacerts: :public_key.cacerts_get()]}
  rescue
    _ ->
      {:error,
       "this system has no CA certificates OTP can read; install them (Debian: ca-certificates) or set DYNAMIC_SRV_NIF_CACERTFILE to a PEM file"}
  end

  defp ca_option(file) do
    if File.regular?(file),
      do: {:ok, [cacertfile: String.to_charlist(file)]},
      else:
        {:error,
         "DYNAMIC_SRV_NIF_CACERTFILE=#{file} is not a file; give a PEM file of CA certificates"}
  end

  defp describe({:failed_connect, [{:to_address, {host, port}}, {_, _, reason}]}),
    do: "cannot connect to #{host}:#{port} (#{inspect(reason)})"

  defp describe(:timeout), do: "no complete answer within the timeout (DYNAMIC_SRV_NIF_TIMEOUT)"
  defp describe(reason), do: inspect(reason, limit: 20)
end
