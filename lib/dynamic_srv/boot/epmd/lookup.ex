defmodule DynamicSrv.Epmd.Lookup do
  @moduledoc false
  # Where a peer node listens, for `DynamicSrv.Epmd` (its "Resolution of
  # name@host" is the user's account of this policy): the port book, else
  # DNS, else the last answer known, here or in a connected peer's book.
  # Each answer, also a failure, is kept for one connection attempt
  # (`DynamicSrv.Defaults.attempt_ttl/0`).

  alias DynamicSrv.{Defaults, PortBook, Resolver, SrvAnswer}

  # How long the nodes of a service answer asked for one node stay booked.
  @service_book_ttl 5_000
  # How many connected peers are asked when DNS does not answer, and for
  # how long (ms).
  @peers_asked 3
  @peer_timeout 1_000

  @type family :: :inet | :inet6

  @doc """
  The address and ports of the node `name@host` over `family`. `own_port`
  is this node's `ERL_DIST_PORT` (or `nil`), the port of nodes named by an
  IP address.
  """
  @spec find(String.t(), String.t(), family(), :inet.port_number() | nil) ::
          {:ok, :inet.ip_address(), [:inet.port_number(), ...]} | {:error, term()}
  def find(name, host, family, own_port) do
    node = name <> "@" <> host

    case PortBook.fetch_ports(node, family) do
      {:ok, ip, ports} when ip != nil -> {:ok, ip, ports}
      {:ok, nil, ports} -> resolve_address(node, name, host, family, ports)
      {:error, _} = error -> error
      :miss -> resolve_or_last_known(node, name, host, family, own_port)
    end
  end

  # A lookup that got no answer (timeout, SERVFAIL, refused, a network
  # error) falls back to the node's last known address and port, this
  # node's or, failing that, a connected peer's: a DNS hiccup while the
  # cluster forms must not fail connection attempts, since `global` turns
  # each failed one into a cluster-wide disconnect of that node. (A cluster
  # forming on a loaded host meets exactly this: `global` connects every
  # node to the nodes its peers know, and DNS is slowest then.) An answer
  # that says the node is not there is believed.
  defp resolve_or_last_known(node, name, host, family, own_port) do
    case resolve_miss(name, host, family, own_port) do
      {:error, reason} = error ->
        with false <- said_absent?(reason),
             :miss <- PortBook.fetch_stale(node, family),
             :miss <- ask_peers(node, family) do
          remember(node, family, error)
        else
          {:ok, ip, ports} -> remember(node, family, {:ok, ip, ports})
          true -> remember(node, family, error)
        end

      answer ->
        remember(node, family, answer)
    end
  end

  # The last address and ports that a few connected nodes know for `node`:
  # the first that any of them answers. A peer without this package, or
  # one that does not answer in time, counts as not knowing.
  defp ask_peers(node, family) do
    peers = Node.list() |> Enum.shuffle() |> Enum.take(@peers_asked)

    peers
    |> :erpc.multicall(PortBook, :fetch_stale, [node, family], @peer_timeout)
    |> Enum.find_value(:miss, fn
      {:ok, {:ok, ip, [_ | _] = ports}} when is_tuple(ip) -> {:ok, ip, ports}
      _ -> nil
    end)
  end

  defp said_absent?({:not_in_srv_answer, _}), do: true
  defp said_absent?(reason), do: reason in [:nxdomain, :no_data, :address_family, :no_local_port]

  defp remember(node, family, answer) do
    PortBook.put(node, family, answer, Defaults.attempt_ttl())
    answer
  end

  # A host that is an IP address (nodes named app@10.0.0.5, as the Dns and
  # Udp providers produce) needs no DNS: the port book or, failing that,
  # this node's own ERL_DIST_PORT (nodes of such a cluster share one port).
  defp resolve_miss(name, host, family, own_port) do
    case :inet.parse_strict_address(String.to_charlist(host)) do
      {:ok, ip} -> ip_host(ip, family, own_port)
      {:error, _} -> resolve(name, host, family)
    end
  end

  defp ip_host(ip, family, own_port) do
    cond do
      PortBook.family_of(ip) != family -> {:error, :address_family}
      own_port -> {:ok, ip, [own_port]}
      true -> {:error, :no_local_port}
    end
  end

  defp resolve(name, host, family) do
    fqdn = name <> "." <> host
    # A per-node SRV name that does not exist is answered by the NIF
    # without a query while the server's SOA says it stays so (RFC 2308).
    srv = Resolver.request(fqdn, :srv)
    ip = Resolver.request(fqdn, Resolver.address_type(family))

    # Both queries are in flight; collect both answers before deciding.
    srv_answer = finish(srv)
    ip_answer = finish(ip)

    with {:ok, records} <- port_records(srv_answer, name, host),
         {:ok, address} <- address(ip_answer, records, family) do
      {:ok, address, records |> Enum.map(& &1.port) |> Enum.uniq() |> Enum.sort()}
    end
  end

  # The book knows the ports but not the address: ask A/AAAA once and add
  # the address to the entry, which keeps the poll's expiry.
  defp resolve_address(node, name, host, family, ports) do
    case Resolver.lookup_ip(name <> "." <> host, family) do
      {:ok, [ip | _]} ->
        PortBook.put_address(node, family, ip)
        {:ok, ip, ports}

      {:ok, []} ->
        {:error, :no_data}

      {:error, _} = error ->
        error
    end
  end

  defp finish({:ok, request}), do: Resolver.await(request)
  defp finish({:error, _} = error), do: error

  # A per-node SRV answer (Consul tag style) gives the ports: those of its
  # records whose target is this node, else of its first record with a
  # port; without one, the service's answer must list this node. Which
  # records are which node's is DynamicSrv.SrvAnswer's rule, the poll's.
  defp port_records({:ok, records}, name, host) when is_list(records) do
    case Enum.find(records, &(&1.port != 0)) do
      nil -> port_records({:error, :no_data}, name, host)
      first -> {:ok, own_records(service_nodes(records, host), name, host) || [first]}
    end
  end

  defp port_records({:error, reason}, name, host) when reason in [:nxdomain, :no_data] do
    with {:ok, records} <- Resolver.lookup_srv(host) do
      # The service's answer lists the host's other nodes too: booked
      # (by name, without creating atoms), connecting to them needs no DNS.
      entries = service_nodes(records, host)
      SrvAnswer.book(entries, @service_book_ttl)

      case own_records(entries, name, host) do
        nil -> {:error, {:not_in_srv_answer, host}}
        own -> {:ok, own}
      end
    end
  end

  defp port_records({:error, _} = error, _name, _host), do: error

  defp service_nodes(records, host) do
    case SrvAnswer.nodes(records, host) do
      {:ok, entries, _ignored} -> entries
      {:error, _} -> []
    end
  end

  # The records of the node `name@host`, its label compared
  # case-insensitively as the naming rule does, or nil.
  defp own_records(entries, name, host) do
    case List.keyfind(entries, String.downcase(name) <> "@" <> host, 0) do
      {_node, own} -> own
      nil -> nil
    end
  end

  defp address({:ok, [%{address: ip} | _]}, _records, _family), do: {:ok, ip}

  defp address(answer, records, family) do
    case Enum.find(SrvAnswer.addresses(records), &(PortBook.family_of(&1) == family)) do
      nil -> with({:ok, []} <- answer, do: {:error, :no_data})
      ip -> {:ok, ip}
    end
  end
end
