defmodule DynamicSrv.Check do
  @moduledoc """
  Diagnoses SRV discovery for one service: what a peer of this node would
  see, printed for a person at a glance. Run it with
  `mix dynamic_srv.check SERVICE`, or from a release with
  `bin/app rpc 'DynamicSrv.Check.main(["my-service.service.consul"])'`.

  It shows the nameservers used, the SRV answer (priority, weight, port,
  TTL, target, and, as the NIF finds by asking the first nameserver, whether
  the UDP answer was truncated so the records came over TCP), the node name each target gives or why it is ignored, each
  node's addresses, whether its port accepts a TCP connection, and the
  local node's own view: its name, `ERL_DIST_PORT`, and whether the answer
  lists it with that port.

  | option | meaning | default |
  | --- | --- | --- |
  | `:nameservers` (`--nameserver ip:port`, repeatable) | servers to ask | `DYNAMIC_SRV_NAMESERVERS`, else resolv.conf |
  | `:protocol` (`--tcp`) | `:tcp` to skip UDP | `:udp` |
  | `:timeout` (`--timeout ms`) | deadline of each lookup | `DYNAMIC_SRV_TIMEOUT_MS`, else 3000 |
  | `:query` (`--query name`) | the SRV name, when it is not the service | the service |
  | `:node` (`--node name@host`) | the local node to look for, when this VM is not it | `node()` when distributed |

  `run/2` returns `{status, report}`; the status is `:error` when the
  lookup fails, when asking the first nameserver fails (a network error
  such as `:enetunreach`, a refused port or no answer in time, one line of
  the report), or when the local node would not be found by its peers.
  """

  alias DynamicSrv.{Env, NodeAtoms, Resolver}

  @connect_timeout 1_000

  @type status :: :ok | :error

  @doc "Parses command-line arguments, prints the report and returns the exit status (0 or 1)."
  @spec main([String.t()]) :: 0 | 1
  def main(argv) do
    case parse_args(argv) do
      {:ok, service, opts} ->
        {status, report} = run(service, opts)
        IO.write(report)
        if status == :ok, do: 0, else: 1

      {:error, message} ->
        IO.puts(:stderr, message)
        1
    end
  end

  @doc false
  @spec parse_args([String.t()]) :: {:ok, String.t(), keyword()} | {:error, String.t()}
  def parse_args(argv) do
    switches = [
      nameserver: :keep,
      tcp: :boolean,
      timeout: :integer,
      query: :string,
      node: :string
    ]

    case OptionParser.parse(argv, strict: switches) do
      {parsed, [service], []} -> options(service, parsed)
      {_, _, [{bad, _} | _]} -> {:error, "dynamic_srv.check: unknown or invalid option #{bad}"}
      _ -> {:error, usage()}
    end
  end

  defp options(service, parsed) do
    servers = for {:nameserver, text} <- parsed, do: text

    with {:ok, nameservers} <- parse_nameservers(servers) do
      opts =
        [
          nameservers: nameservers,
          protocol: if(parsed[:tcp], do: :tcp, else: :udp),
          timeout: parsed[:timeout],
          query: parsed[:query],
          node: parsed[:node]
        ]
        |> Enum.reject(fn {_, v} -> v in [nil, []] end)

      {:ok, service, opts}
    end
  end

  defp parse_nameservers([]), do: {:ok, []}

  defp parse_nameservers(texts) do
    case DynamicSrv.Resolver.parse_nameservers(Enum.join(texts, ",")) do
      {:ok, servers} ->
        {:ok, servers}

      {:error, reason} ->
        {:error, "dynamic_srv.check: --nameserver #{Enum.join(texts, ",")}: #{reason}"}
    end
  end

  defp usage,
    do:
      "usage: mix dynamic_srv.check SERVICE [--nameserver ip:port]... [--tcp] [--timeout ms] [--query name] [--node name@host]"

  @doc "Runs every check and returns the status and the report."
  @spec run(String.t(), keyword()) :: {status(), iodata()}
  def run(service, opts \\ []) do
    query = Keyword.get(opts, :query, service)
    resolver_opts = Keyword.take(opts, [:nameservers, :protocol, :timeout])
    {servers, source} = nameservers(opts)

    header = [
      row("nameservers", "#{format_servers(servers)} (#{source})"),
      row("query", "SRV #{query}")
    ]

    case Resolver.lookup_srv(query, resolver_opts) do
      {:ok, records} ->
        {pairs, ignored} = nodes(records, service)

        rows =
          records
          |> Enum.sort_by(&{&1.priority, -&1.weight, &1.target})
          |> Enum.map(&record_row(&1, pairs, resolver_opts))

        {status, local} = local_view(opts, records, pairs)

        {status, transport} =
          case transport(query, opts, resolver_opts) do
            {:ok, text} -> {status, [row("answer", "#{length(records)} record(s)#{text}")]}
            {:error, line} -> {:error, [row("answer", "#{length(records)} record(s)"), line]}
          end

        report = [
          header,
          transport,
          "\n",
          table(rows),
          ignored_section(ignored),
          "\n",
          local
        ]

        {status, report}

      {:error, reason} ->
        {:error,
         [header, row("answer", "FAILED: #{describe_error(reason)}"), "\n", local_only(opts)]}
    end
  end

  defp nameservers(opts) do
    case {Keyword.get(opts, :nameservers), Env.resolver_defaults()} do
      {[_ | _] = servers, _} -> {servers, "--nameserver"}
      {_, {:ok, %{nameservers: :system}}} -> {:system, "/etc/resolv.conf"}
      {_, {:ok, %{nameservers: servers}}} -> {servers, "DYNAMIC_SRV_NAMESERVERS"}
      {_, {:error, message}} -> {:system, "DYNAMIC_SRV_NAMESERVERS is invalid: #{message}"}
    end
  end

  defp format_servers(:system), do: "system resolvers"

  defp format_servers(servers),
    do: Enum.map_join(servers, ", ", fn {ip, port} -> format_address(ip, port) end)

  defp format_address({_, _, _, _} = ip, port), do: "#{:inet.ntoa(ip)}:#{port}"
  defp format_address(ip, port), do: "[#{:inet.ntoa(ip)}]:#{port}"

  # The NIF asks the first nameserver once over UDP (and over TCP when the
  # answer was cut short) and says how the answer came; the records
  # themselves come from the lookup above. A network error on the way is
  # one report line, and the check fails.
  defp transport(query, opts, resolver_opts) do
    if Keyword.get(opts, :protocol) == :tcp do
      {:ok, ", over TCP (--tcp)"}
    else
      case Resolver.probe(query, resolver_opts) do
        {:ok, %{truncated: false, udp_bytes: size}} ->
          {:ok, ", over UDP (#{size} bytes, not truncated)"}

        {:ok, %{truncated: true, udp_bytes: size, udp_records: udp, tcp_records: tcp}} ->
          {:ok,
           ", over TCP (the UDP answer, #{size} bytes, was truncated: " <>
             "#{udp} record(s) over UDP, #{tcp} over TCP)"}

        {:error, reason} ->
          {:error, row("transport", "FAILED: #{describe_error(reason)}")}
      end
    end
  end

  defp nodes(records, service) do
    case NodeAtoms.to_nodes(
           Enum.map(records, & &1.target),
           service,
           DynamicSrv.Defaults.max_nodes()
         ) do
      {:ok, pairs, ignored} -> {Map.new(pairs), ignored}
      {:error, message} -> {%{}, Enum.map(records, &{&1.target, message})}
    end
  end

  defp record_row(record, pairs, resolver_opts) do
    node = Map.get(pairs, record.target)
    addresses = addresses(record, resolver_opts)

    [
      to_string(record.priority),
      to_string(record.weight),
      to_string(record.port),
      to_string(record.ttl),
      record.target,
      if(node, do: Atom.to_string(node), else: "(ignored)"),
      Enum.map_join(addresses, " ", &to_string(:inet.ntoa(&1))),
      port_state(addresses, record.port)
    ]
  end

  defp addresses(record, resolver_opts) do
    found =
      for family <- [:inet, :inet6],
          {:ok, ips} <- [Resolver.lookup_ip(record.target, family, resolver_opts)],
          ip <- ips,
          do: ip

    Enum.uniq(found ++ record.addresses)
  end

  defp port_state([], _port), do: "no address"

  defp port_state([ip | _], port) do
    case :gen_tcp.connect(ip, port, [], @connect_timeout) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        "open"

      {:error, reason} ->
        "closed (#{reason})"
    end
  end

  defp table(rows) do
    header = ["prio", "weight", "port", "ttl", "target", "node", "addresses", "port check"]
    all = [header | rows]

    widths =
      for i <- 0..(length(header) - 1),
          do: all |> Enum.map(&String.length(Enum.at(&1, i))) |> Enum.max()

    Enum.map(all, fn row ->
      line =
        row
        |> Enum.zip(widths)
        |> Enum.map_join("  ", fn {cell, width} -> String.pad_trailing(cell, width) end)

      ["  ", String.trim_trailing(line), "\n"]
    end)
  end

  defp ignored_section([]), do: []

  defp ignored_section(ignored) do
    [
      "\nignored targets\n"
      | Enum.map(ignored, fn {target, reason} -> "  #{target}: #{reason}\n" end)
    ]
  end

  defp local_view(opts, records, pairs) do
    case local_node(opts) do
      nil ->
        {:ok,
         [
           row("local node", "not distributed; pass --node name@host to check it"),
           dist_port_row()
         ]}

      name ->
        {status, verdict} = verdict(name, records, pairs)
        {status, [row("local node", name), dist_port_row(), row("verdict", verdict)]}
    end
  end

  defp local_only(opts) do
    case local_node(opts) do
      nil ->
        [dist_port_row()]

      name ->
        [
          row("local node", name),
          dist_port_row(),
          row("verdict", "peers cannot find this node: the lookup failed")
        ]
    end
  end

  defp local_node(opts) do
    cond do
      opts[:node] -> opts[:node]
      Node.alive?() -> Atom.to_string(node())
      true -> nil
    end
  end

  defp dist_port_row do
    case Env.dist_port() do
      {:ok, port} -> row("ERL_DIST_PORT", to_string(port))
      {:error, :unset} -> row("ERL_DIST_PORT", "unset")
      {:error, message} -> row("ERL_DIST_PORT", "INVALID: #{message}")
    end
  end

  defp verdict(name, records, pairs) do
    listed =
      for record <- records,
          Atom.to_string(Map.get(pairs, record.target, :"")) == name,
          do: record

    case {listed, Env.dist_port()} do
      {[], _} ->
        {:error, "peers cannot find this node: no SRV target gives #{name}"}

      {[%{port: port} | _], {:ok, port}} ->
        {:ok, "listed with port #{port}: peers will find this node"}

      {[%{port: port} | _], {:ok, local}} ->
        {:error,
         "listed with port #{port}, but ERL_DIST_PORT is #{local}: peers will dial the wrong port"}

      {[%{port: port} | _], _} ->
        {:ok, "listed with port #{port} (ERL_DIST_PORT of this VM not set, not compared)"}
    end
  end

  defp row(label, value), do: [String.pad_trailing(label, 14), value, "\n"]

  defp describe_error(:nxdomain), do: "the name does not exist (NXDOMAIN)"
  defp describe_error(:no_data), do: "the name has no SRV records"
  defp describe_error(:timeout), do: "no answer before the deadline"
  defp describe_error(:servfail), do: "the server failed (SERVFAIL)"
  defp describe_error(:refused), do: "the server refused the query"
  defp describe_error({kind, message}) when is_binary(message), do: "#{kind}: #{message}"
  defp describe_error(other), do: inspect(other)
end
