defmodule DynamicSrv.Env do
  @moduledoc """
  Reads and validates the operating-system environment variables of the
  package. Every function returns a tagged tuple whose error is one sentence
  naming the variable, the bad value and the fix.

  | variable | meaning | default |
  | --- | --- | --- |
  | `ERL_DIST_PORT` | the port this node's distribution listens on, 1..65535 | required (optional for `rem-`/`rpc-` helper nodes) |
  | `DYNAMIC_SRV_NAMESERVERS` | DNS servers, comma-separated `ip:port` (IPv6 with a port as `[::1]:53`; `::1:53`, which reads two ways, is refused; so are `0.0.0.0`, `::`, broadcast and multicast addresses) | the system's `/etc/resolv.conf` |
  | `DYNAMIC_SRV_TIMEOUT_MS` | the deadline of one DNS lookup, in milliseconds, 1..600000 | `3000` |

  The values are read once, by `DynamicSrv.Epmd.start_link/0` at boot or by
  the first lookup, and kept in `:persistent_term`.
  """

  alias DynamicSrv.Defaults

  @key {__MODULE__, :resolver_defaults}

  @type resolver_defaults :: %{
          nameservers: :system | [{:inet.ip_address(), :inet.port_number()}],
          timeout: pos_integer()
        }

  @doc """
  The distribution port from `ERL_DIST_PORT`: `{:ok, port}`,
  `{:error, :unset}` when the variable is absent, or `{:error, message}`.
  """
  @spec dist_port(String.t() | nil) :: {:ok, 1..65535} | {:error, :unset | String.t()}
  def dist_port(value \\ System.get_env("ERL_DIST_PORT"))

  def dist_port(nil), do: {:error, :unset}

  def dist_port(value) do
    case Integer.parse(String.trim(value)) do
      {port, ""} when port in 1..65535 ->
        {:ok, port}

      _ ->
        {:error,
         "ERL_DIST_PORT=#{inspect(value)} is not a port number: set it to an integer in 1..65535, " <>
           "the port this node's distribution listens on"}
    end
  end

  @doc """
  The message for a node that needs `ERL_DIST_PORT` and has none; without a
  name (a runtime start, where the name is not known yet), for this node.
  """
  @spec dist_port_unset_message(String.t() | nil) :: String.t()
  def dist_port_unset_message(node_name \\ nil) do
    subject = if node_name, do: "node #{node_name}", else: "this node"

    "ERL_DIST_PORT is not set: #{subject} uses DynamicSrv.Epmd, which needs the port its " <>
      "distribution listens on; export ERL_DIST_PORT=<port in 1..65535> before starting it"
  end

  @doc """
  The resolver defaults from `DYNAMIC_SRV_NAMESERVERS` and
  `DYNAMIC_SRV_TIMEOUT_MS`, read once and then kept.
  """
  @spec resolver_defaults() :: {:ok, resolver_defaults()} | {:error, String.t()}
  def resolver_defaults do
    case :persistent_term.get(@key, nil) do
      nil -> read_resolver_defaults() |> tap(&keep/1)
      defaults -> {:ok, defaults}
    end
  end

  defp keep({:ok, defaults}), do: :persistent_term.put(@key, defaults)
  defp keep({:error, _}), do: :ok

  @doc false
  @spec read_resolver_defaults(String.t() | nil, String.t() | nil) ::
          {:ok, resolver_defaults()} | {:error, String.t()}
  def read_resolver_defaults(
        nameservers \\ System.get_env("DYNAMIC_SRV_NAMESERVERS"),
        timeout \\ System.get_env("DYNAMIC_SRV_TIMEOUT_MS")
      ) do
    with {:ok, servers} <- nameservers(nameservers),
         {:ok, ms} <- timeout(timeout) do
      {:ok, %{nameservers: servers, timeout: ms}}
    end
  end

  defp nameservers(nil), do: {:ok, :system}

  defp nameservers(text) do
    case DynamicSrv.Resolver.parse_nameservers(text) do
      {:ok, servers} ->
        {:ok, servers}

      {:error, reason} ->
        {:error,
         "DYNAMIC_SRV_NAMESERVERS=#{inspect(text)} is invalid: #{reason}; " <>
           "set it to comma-separated ip:port items such as 127.0.0.1:8600,[::1]:53, or unset it to use /etc/resolv.conf"}
    end
  end

  defp timeout(nil), do: {:ok, Defaults.timeout()}

  # The bound is the Rust core's, which every lookup's settings meet.
  defp timeout(text) do
    max = DynamicSrv.Resolver.max_timeout()

    case Integer.parse(String.trim(text)) do
      {ms, ""} when ms in 1..max//1 ->
        {:ok, ms}

      _ ->
        {:error,
         "DYNAMIC_SRV_TIMEOUT_MS=#{inspect(text)} is invalid: set it to a whole number of milliseconds " <>
           "in 1..#{max}, or unset it for the default of #{Defaults.timeout()}"}
    end
  end
end
