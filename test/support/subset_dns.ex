defmodule DynamicSrv.Test.SubsetDns do
  @moduledoc """
  A DNS server on loopback (UDP and TCP, one port) that answers a service's
  SRV query with only some of its records, as real services do, and every
  node's own name correctly. dnsmasq cannot be made to do this.

  Records are given as for `DynamicSrv.Test.DnsServer`: `{:srv, service,
  target, port}` and `{:a, name, ip}`. Each SRV target also gets an SRV
  record of its own name (`target` SRV -> itself, the same port), as the
  package's per-node names are. Unknown names are NXDOMAIN; a known name
  without records of the asked type is an empty NOERROR answer.

  How a service's answer is cut (`:mode`):

  | mode | answer |
  | --- | --- |
  | `:all` | every record |
  | `{:sample, k}` | `k` records chosen at random per query, over UDP and TCP (Route 53's multivalue answers: `k` = 8) |
  | `{:fit, bytes}` | shuffled, then records dropped until the message fits in `bytes` (or the query's EDNS size, or 512 without EDNS, whichever is smaller) over UDP, with no TC bit; whole over TCP (Consul's default) |

  The server counts the queries it answers, by name, type and transport.
  """

  defstruct [:pid, :port, :table]

  @doc "Starts the server; options `:mode` (default `:all`)."
  def start(records, opts \\ []) do
    parent = self()

    pid =
      spawn(fn ->
        table = :ets.new(:subset_dns, [:public, :set])
        :ets.insert(table, {:mode, Keyword.get(opts, :mode, :all)})
        :ets.insert(table, {:records, index(records)})
        {udp, port} = open_udp()
        {:ok, listen} = :gen_tcp.listen(port, tcp_options())
        acceptor = spawn_link(fn -> accept(listen, table) end)
        :ok = :gen_tcp.controlling_process(listen, acceptor)
        send(parent, {self(), :started, port, table})
        udp_loop(udp, table)
      end)

    receive do
      {^pid, :started, port, table} -> %__MODULE__{pid: pid, port: port, table: table}
    after
      5_000 -> raise "the subset DNS server did not start"
    end
  end

  @doc "Serves `records` from now on (a node deregistered, or registered)."
  def set_records(%__MODULE__{table: table}, records),
    do: :ets.insert(table, {:records, index(records)})

  @doc "Answers service queries in `mode` from now on."
  def set_mode(%__MODULE__{table: table}, mode), do: :ets.insert(table, {:mode, mode})

  @doc "The `nameservers` option pointing at this server."
  def nameservers(%__MODULE__{port: port}), do: [{{127, 0, 0, 1}, port}]

  @doc "The `DYNAMIC_SRV_NAMESERVERS` value pointing at this server."
  def env_value(%__MODULE__{port: port}), do: "127.0.0.1:#{port}"

  @doc "The environment of a node that asks this server, with a 1 s lookup timeout."
  def node_env(server),
    do: [{"DYNAMIC_SRV_NAMESERVERS", env_value(server)}, {"DYNAMIC_SRV_TIMEOUT_MS", "1000"}]

  @doc "Queries answered so far: `%{{name, type, :udp | :tcp} => count}`."
  def queries(%__MODULE__{table: table}) do
    for {{:count, key}, n} <- :ets.tab2list(table), into: %{}, do: {key, n}
  end

  @doc "The number of queries answered so far."
  def query_count(server), do: server |> queries() |> Map.values() |> Enum.sum()

  def stop(%__MODULE__{pid: pid}), do: DynamicSrv.Test.Wait.kill(pid)

  # %{lowercase name => %{srv: [{prio, weight, port, target}], a: [ip]}}
  defp index(records) do
    Enum.reduce(records, %{}, fn
      {:srv, service, target, port}, acc ->
        acc
        |> add(service, :srv, {0, 1, port, target})
        |> add(target, :srv, {0, 1, port, target})

      {:a, name, ip}, acc ->
        add(acc, name, :a, ip)
    end)
  end

  defp add(acc, name, type, data) do
    key = String.downcase(name)

    Map.update(
      acc,
      key,
      %{type => [data]},
      &Map.update(&1, type, [data], fn l -> l ++ [data] end)
    )
  end

  defp open_udp do
    port = DynamicSrv.Test.DnsServer.free_port()

    case :gen_udp.open(port, [:binary, active: true, ip: {127, 0, 0, 1}]) do
      {:ok, socket} -> {socket, port}
      {:error, :eaddrinuse} -> open_udp()
    end
  end

  defp tcp_options,
    do: [:binary, ip: {127, 0, 0, 1}, packet: 2, active: false, reuseaddr: true, backlog: 128]

  defp udp_loop(socket, table) do
    receive do
      {:udp, ^socket, ip, port, packet} ->
        case reply(packet, table, :udp) do
          nil -> :ok
          bin -> :gen_udp.send(socket, ip, port, bin)
        end

        udp_loop(socket, table)

      _other ->
        udp_loop(socket, table)
    end
  end

  defp accept(listen, table) do
    case :gen_tcp.accept(listen) do
      {:ok, socket} ->
        pid = spawn(fn -> serve_tcp(socket, table) end)
        :gen_tcp.controlling_process(socket, pid)
        send(pid, :go)
        accept(listen, table)

      {:error, _} ->
        :ok
    end
  end

  defp serve_tcp(socket, table) do
    receive do
      :go -> tcp_loop(socket, table)
    end
  end

  defp tcp_loop(socket, table) do
    case :gen_tcp.recv(socket, 0, 30_000) do
      {:ok, packet} ->
        case reply(packet, table, :tcp) do
          nil -> :ok
          bin -> :gen_tcp.send(socket, bin)
        end

        tcp_loop(socket, table)

      {:error, _} ->
        :gen_tcp.close(socket)
    end
  end

  defp reply(packet, table, transport) do
    with {:ok, msg} <- :inet_dns.decode(packet),
         [query] <- :inet_dns.msg(msg, :qdlist) do
      name = :inet_dns.dns_query(query, :domain) |> to_string() |> String.downcase()
      type = :inet_dns.dns_query(query, :type)
      key = {:count, {name, type, transport}}
      :ets.update_counter(table, key, 1, {key, 0})
      [{:records, records}] = :ets.lookup(table, :records)
      [{:mode, mode}] = :ets.lookup(table, :mode)
      header = :inet_dns.msg(msg, :header)

      # Answers carry an OPT record when the query did (as Consul's do).
      opt = edns_opt(msg)

      case Map.fetch(records, name) do
        :error ->
          encode(header, query, [], 3, opt)

        {:ok, by_type} ->
          answers = Map.get(by_type, type, [])
          service? = type == :srv and Enum.any?(answers, fn {_, _, _, t} -> t != name end)
          rrs = Enum.map(answers, &rr(name, type, &1))
          cut(header, query, rrs, if(service?, do: mode, else: :all), transport, {edns(msg), opt})
      end
    else
      _ -> nil
    end
  end

  defp cut(header, query, rrs, {:sample, k}, _transport, {_size, opt}),
    do: encode(header, query, rrs |> Enum.shuffle() |> Enum.take(k), 0, opt)

  defp cut(header, query, rrs, {:fit, bytes}, :udp, {size, opt}),
    do: fit(header, query, Enum.shuffle(rrs), min(bytes, size), opt)

  defp cut(header, query, rrs, _mode, _transport, {_size, opt}),
    do: encode(header, query, rrs, 0, opt)

  defp fit(header, query, rrs, limit, opt) do
    bin = encode(header, query, rrs, 0, opt)

    if byte_size(bin) <= limit or rrs == [],
      do: bin,
      else: fit(header, query, tl(rrs), limit, opt)
  end

  defp edns_opt(msg) do
    if Enum.any?(:inet_dns.msg(msg, :arlist), &(:inet_dns.rr(&1, :type) == :opt)),
      do: [:inet_dns.make_rr(domain: ~c"", type: :opt, udp_payload_size: 4096)],
      else: []
  end

  defp edns(msg) do
    case for rr <- :inet_dns.msg(msg, :arlist), :inet_dns.rr(rr, :type) == :opt, do: rr do
      [opt | _] -> :inet_dns.rr(opt, :udp_payload_size)
      [] -> 512
    end
  end

  defp rr(name, :srv, {p, w, port, target}),
    do:
      :inet_dns.make_rr(
        domain: to_charlist(name),
        type: :srv,
        class: :in,
        ttl: 0,
        data: {p, w, port, to_charlist(target)}
      )

  defp rr(name, :a, ip),
    do: :inet_dns.make_rr(domain: to_charlist(name), type: :a, class: :in, ttl: 0, data: ip)

  defp encode(header, query, answers, rcode, opt) do
    header =
      :inet_dns.make_header(
        id: :inet_dns.header(header, :id),
        qr: true,
        opcode: :query,
        aa: true,
        tc: false,
        rd: :inet_dns.header(header, :rd),
        ra: true,
        rcode: rcode
      )

    :inet_dns.encode(
      :inet_dns.make_msg(header: header, qdlist: [query], anlist: answers, arlist: opt)
    )
  end
end
