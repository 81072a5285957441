defmodule DynamicSrv.Resolver do
  @moduledoc """
  Asynchronous DNS lookups (SRV, A, AAAA) done by the Rust NIF.

  A lookup never occupies a BEAM scheduler while it waits on the network: the
  NIF hands the query to a tokio runtime and returns at once, and the answer
  arrives as a message to the calling process. Every lookup is bounded by its
  timeout.

  ## Options

  They follow `:inet_res` where the two overlap.

  | option | meaning | default |
  | --- | --- | --- |
  | `:nameservers` | `[{ip_tuple, port}]` to ask, e.g. `[{{127, 0, 0, 1}, 8600}]` for a Consul agent | `DYNAMIC_SRV_NAMESERVERS`, else `/etc/resolv.conf` |
  | `:timeout` | deadline of the whole lookup, in ms | `DYNAMIC_SRV_TIMEOUT_MS`, else 3000 |
  | `:attempts` | tries per nameserver within the deadline | 2 |
  | `:protocol` | `:udp` (truncated answers are retried over TCP) or `:tcp` (always TCP) | `:udp` |

  EDNS0 is advertised with a large payload, and answers with a TTL of 0 are
  never cached.

  Names: only a trailing dot makes a name absolute. Without explicit
  nameservers, resolv.conf's `search` list and `ndots` apply as with the OS
  resolver (in a pod, `"web.default"` finds `web.default.svc.cluster.local`);
  explicit nameservers are asked the name as given.

  ## Errors

  Every lookup ends by its deadline (counted from the call, time spent
  waiting for a turn included) with `{:ok, records}` or one of these:

  | error | when |
  | --- | --- |
  | `:nxdomain` | the name does not exist |
  | `:no_data` | the name exists, without records of that type |
  | `:timeout` | no usable answer before the deadline: a silent, stopped or unreachable server, or a lookup that waited for a turn (at most 96 queries per server are in flight, 128 lookups on the system path) |
  | `:servfail` / `:refused` | the server's answer |
  | `{:invalid_name, message}` / `{:bad_settings, message}` | refused at once, before anything is sent |
  | `{:other, message}` | anything else, with a description: an answer code such as NOTIMP, a network error the system path reports early, more than 65,535 lookups in flight |
  """

  @reply_tag :dynamic_srv_dns
  # The NIF always replies within the deadline; this margin only covers
  # scheduling noise.
  @reply_margin 1_000

  alias DynamicSrv.Defaults

  @type name :: String.t() | charlist()
  @type family :: :inet | :inet6
  @type srv_record :: %{
          priority: non_neg_integer(),
          weight: non_neg_integer(),
          port: :inet.port_number(),
          target: String.t(),
          ttl: non_neg_integer(),
          addresses: [:inet.ip_address()]
        }
  @type reason ::
          :nxdomain
          | :no_data
          | :timeout
          | :servfail
          | :refused
          | {:invalid_name, String.t()}
          | {:bad_settings, String.t()}
          | {:other, String.t()}
  @type option ::
          {:nameservers, [{:inet.ip_address(), :inet.port_number()}]}
          | {:timeout, pos_integer()}
          | {:attempts, pos_integer()}
          | {:protocol, :udp | :tcp}
  @opaque request :: {pos_integer(), :srv | :a | :aaaa, integer()}

  @schema [
    nameservers:
      {:nameservers, nil,
       "`[{ip_tuple, port}]`, at most 16, each one DNS server: an unspecified (`0.0.0.0`, `::`), broadcast or multicast address, or port 0, is refused with a message",
       "`DYNAMIC_SRV_NAMESERVERS`, else resolv.conf"},
    timeout:
      {:pos_integer, nil, "the deadline of one lookup, ms",
       "`DYNAMIC_SRV_TIMEOUT_MS`, else #{Defaults.timeout()}"},
    protocol:
      {{:in, [:udp, :tcp]}, Defaults.protocol(),
       "`:udp` (a truncated answer is asked again over TCP) or `:tcp`"}
  ]

  @doc """
  The `DynamicSrv.Config` schema of the resolver keys every DNS user of a
  configuration accepts (the strategy and the SRV and DNS providers); its
  validated values become options with `options/1`.
  """
  @spec schema() :: DynamicSrv.Config.schema()
  def schema, do: @schema

  @doc """
  Looks up the SRV records of `name`. Each record carries the addresses the
  server sent for its target in the additional section (often empty).
  """
  @spec lookup_srv(name(), [option()]) :: {:ok, [srv_record()]} | {:error, reason()}
  def lookup_srv(name, opts \\ []) do
    with {:ok, request} <- request(name, :srv, opts), do: await(request)
  end

  @doc "Looks up the A (`:inet`) or AAAA (`:inet6`) addresses of `name`."
  @spec lookup_ip(name(), family(), [option()]) ::
          {:ok, [:inet.ip_address()]} | {:error, reason()}
  def lookup_ip(name, family, opts \\ []) when family in [:inet, :inet6] do
    with {:ok, request} <- request(name, address_type(family), opts),
         {:ok, records} <- await(request) do
      {:ok, Enum.map(records, & &1.address)}
    end
  end

  @doc """
  Starts a lookup without waiting for it, so several can be in flight from one
  process; collect each with `await/1`. Records of `:a`/`:aaaa` are maps with
  `:address` and `:ttl`.
  """
  @spec request(name(), :srv | :a | :aaaa, [option()]) :: {:ok, request()} | {:error, reason()}
  def request(name, type, opts \\ []) when type in [:srv, :a, :aaaa] do
    with {:ok, settings, timeout} <- settings(opts),
         {:ok, tag} <- DynamicSrv.Native.lookup(type, to_string(name), settings) do
      {:ok, {tag, type, System.monotonic_time(:millisecond) + timeout + @reply_margin}}
    end
  end

  @doc false
  # Transport facts for DynamicSrv.Check, from the NIF: how the answer to
  # an SRV query of `name` comes from the first nameserver over UDP (bytes,
  # truncated or not, records) and, when truncated, how many records come
  # over TCP. Network errors are {:other, message} naming the server.
  @spec probe(name(), [option()]) :: {:ok, map()} | {:error, reason()}
  def probe(name, opts \\ []) do
    with {:ok, settings, timeout} <- settings(opts),
         {:ok, tag} <- DynamicSrv.Native.probe(:srv, to_string(name), settings) do
      receive do
        {@reply_tag, ^tag, {:ok, {ip, port, bytes, truncated, udp, tcp}}} ->
          {:ok,
           %{
             server: {ip, port},
             udp_bytes: bytes,
             truncated: truncated,
             udp_records: udp,
             tcp_records: tcp
           }}

        {@reply_tag, ^tag, {:error, _} = error} ->
          error
      after
        timeout + @reply_margin -> {:error, :timeout}
      end
    end
  end

  @doc """
  The resolver options among `config` (a map or keyword list of a
  strategy's or provider's settings): `:nameservers`, `:timeout` and
  `:protocol`, when set.
  """
  @spec options(map() | keyword()) :: [option()]
  def options(config),
    do: for({key, _} <- @schema, value = config[key], do: {key, value})

  @doc """
  Parses comma-separated `ip:port` items (`127.0.0.1:8600,[::1]:53`, the
  syntax of `DYNAMIC_SRV_NAMESERVERS`) into nameservers, by the rule every
  lookup's settings follow (at most 16; no unspecified, broadcast or
  multicast address, no port 0).
  """
  @spec parse_nameservers(String.t()) ::
          {:ok, [{:inet.ip_address(), :inet.port_number()}]} | {:error, String.t()}
  def parse_nameservers(text),
    do: text |> DynamicSrv.Native.parse_nameservers() |> settings_result()

  @doc "Checks nameservers given as `[{ip_tuple, port}]` by the same rule."
  @spec check_nameservers([{:inet.ip_address(), :inet.port_number()}]) ::
          :ok | {:error, String.t()}
  def check_nameservers(servers) do
    with {:ok, _} <- servers |> DynamicSrv.Native.check_nameservers() |> settings_result(),
         do: :ok
  end

  @doc "The longest lookup deadline the resolver accepts, in ms."
  @spec max_timeout() :: pos_integer()
  def max_timeout, do: DynamicSrv.Native.limits().max_timeout_ms

  @doc "Whether the resolver's core (the NIF) is loaded."
  @spec loaded?() :: boolean()
  def loaded?, do: DynamicSrv.Native.loaded?()

  defp settings_result({:ok, _} = ok), do: ok
  defp settings_result({:error, {_kind, reason}}) when is_binary(reason), do: {:error, reason}
  defp settings_result({:error, reason}), do: {:error, inspect(reason)}

  @doc "Waits for the answer of a lookup started with `request/3`."
  @spec await(request()) :: {:ok, [map()]} | {:error, reason()}
  def await({tag, type, deadline}) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {@reply_tag, ^tag, {:ok, records}} -> {:ok, Enum.map(records, &record(type, &1))}
      {@reply_tag, ^tag, {:error, _} = error} -> error
    after
      wait -> {:error, :timeout}
    end
  end

  @doc "The record type of an address family's addresses: `:a` or `:aaaa`."
  @spec address_type(family()) :: :a | :aaaa
  def address_type(:inet), do: :a
  def address_type(:inet6), do: :aaaa

  defp record(:srv, {priority, weight, port, target, ttl, addresses}),
    do: %{
      priority: priority,
      weight: weight,
      port: port,
      target: target,
      ttl: ttl,
      addresses: addresses
    }

  defp record(_, {address, ttl}), do: %{address: address, ttl: ttl}

  defp settings(opts) do
    case DynamicSrv.Env.resolver_defaults() do
      {:ok, defaults} ->
        timeout = Keyword.get(opts, :timeout, defaults.timeout)
        nameservers = Keyword.get(opts, :nameservers, defaults.nameservers)
        attempts = Keyword.get(opts, :attempts, Defaults.attempts())
        protocol = Keyword.get(opts, :protocol, Defaults.protocol())
        validate({nameservers, timeout, attempts, protocol})

      {:error, message} ->
        {:error, {:bad_settings, message}}
    end
  end

  defp validate({_, timeout, _, _} = settings) when is_integer(timeout) and timeout > 0,
    do: {:ok, settings, timeout}

  defp validate({_, timeout, _, _}),
    do:
      {:error,
       {:bad_settings, "timeout: #{inspect(timeout)} is not a positive number of milliseconds"}}
end
