defmodule DynamicSrv.Epmd do
  @moduledoc """
  An epmd client module for distribution on a dynamically assigned port, with
  no epmd daemon: peers' addresses and ports come from DNS.

  Start nodes with

      ERL_DIST_PORT=4370 ELIXIR_ERL_OPTIONS="-start_epmd false -epmd_module Elixir.DynamicSrv.Epmd" \\
        elixir --name node-0@my-service.service.consul -S mix run --no-halt

  | callback | answer |
  | --- | --- |
  | `listen_port_please/2` | `ERL_DIST_PORT`; `0` for the `rem-`/`rpc-` helper nodes of releases |
  | `register_node/2,3` | `{:ok, -1}`: nothing to register with |
  | `address_please/3` | loopback and `ERL_DIST_PORT` for the local node (and for its helpers asking for it); otherwise the port book, else DNS |
  | `port_please/2,3` | the port part of the same resolution |
  | `names/1` | `{:error, :address}`: there is no daemon to ask |

  ## Resolution of `name@host`

  1. The `DynamicSrv.PortBook`, filled by the membership engine's SRV polls.
  2. DNS, two queries in flight at once: SRV of `name.host` (a per-node
     record, as Consul tags give) and A (`:inet`) or AAAA (`:inet6`) of
     `name.host`. Without a per-node SRV record, the SRV answer of `host` is
     asked, and the record whose target is `name.host` gives the port.
     Addresses the server sent in the additional section stand in for a
     failed A/AAAA answer.

  3. When DNS gives no answer (a timeout, SERVFAIL, refused, a network
     error), the last address and port known for the node, up to ten
     minutes old (`DynamicSrv.PortBook.fetch_stale/2`): while a cluster
     forms, `global` turns every failed connection attempt into a
     cluster-wide disconnect of that node. An answer that says the node is
     not there (NXDOMAIN, no data, not in the service's answer) is believed.

  Each answer (also a failure) is kept for one second: OTP asks twice per
  connection attempt, and the second ask costs no DNS. Lookups use the
  `DYNAMIC_SRV_NAMESERVERS` and `DYNAMIC_SRV_TIMEOUT_MS` settings.

  Every SRV record of the node counts, and records with port 0 are none (no
  target). Which SRV target names which node is the rule of
  `DynamicSrv.Naming`, the strategy's: node names are matched
  case-insensitively against targets, and the nodes of a service answer are
  booked under their label in lowercase.

  ## Several ports

  A node restarted on a new port while its old registration lingers is
  listed with two ports (or more). Each connection attempt then starts from
  the next port in turn (a per-node counter in the port book) and takes the
  first, from there, that accepts a TCP connection within 500 ms; the ports
  are probed at once, each by its own short-lived process, and the choice
  is made as soon as the ports before it in turn have refused, so the probe
  adds about one round trip to that attempt on a LAN, 500 ms when a port
  before it neither accepts nor refuses, and never more than 1 s (on a
  machine so loaded that the probes run late). When none accepts, a port
  that has not answered no is answered, else the port whose turn it is. The
  choice is kept for one second, so both asks of one attempt get the same
  port, and the next attempt takes the next turn: a port that accepts but
  is not the node (its old port reused by another node) is passed over on
  the following attempt.
  A node with one port costs no probe.

  ## Starting the distribution

  `start_link/0` is called by the kernel each time the distribution starts:
  at boot (`--name`/`--sname`, or `-name`/`-sname` in `vm.args`), or later by
  `Node.start/2`. It validates the environment (see `DynamicSrv.Env`),
  creates the `DynamicSrv.PortBook` table and returns `:ignore`: no process
  of this package runs under the kernel's `net_sup`, so nothing of it can
  take the distribution down.

  A bad or missing value is one message:

    * at boot, before Logger and the file server exist, it is written to
      standard error and the VM stops with status 1;
    * at runtime, `Node.start/2` returns `{:error, reason}` with the message
      inside `reason` (as the kernel wraps a failed start) and the VM lives.

  """

  alias DynamicSrv.{Env, Hints, Naming, PortBook, Resolver}

  @version 5
  @attempt_ttl 1_000
  # How long a node with several ports is given to accept a probe connection.
  @probe_timeout 500
  # How long the nodes of a service answer asked for one node stay booked.
  @service_book_ttl 5_000
  @config_key {__MODULE__, :dist_port}

  @doc false
  @spec start_link() :: :ignore | {:error, String.t()} | no_return()
  def start_link do
    with {:ok, port} <- start_dist_port(),
         :ok <- boot_nif(),
         {:ok, _} <- Env.resolver_defaults() do
      :persistent_term.put(@config_key, port)
      PortBook.ensure_started()
      :ignore
    else
      {:error, message} -> if boot?(), do: fatal(message), else: {:error, message}
    end
  end

  # At boot the node's name is known to listen_port_please/2, which reports
  # an unset port with it (release helpers need none); a runtime start
  # reports it here, the only place whose error Node.start/2 returns.
  defp start_dist_port do
    case boot_dist_port() do
      {:ok, nil} -> if boot?(), do: {:ok, nil}, else: {:error, Env.dist_port_unset_message()}
      other -> other
    end
  end

  # The distribution starts at boot when the VM was given a node name; the
  # kernel's init arguments tell, without asking any server that may not be
  # running yet.
  defp boot? do
    match?({:ok, _}, :init.get_argument(:name)) or match?({:ok, _}, :init.get_argument(:sname))
  end

  defp boot_dist_port do
    case Env.dist_port() do
      {:ok, port} -> {:ok, port}
      {:error, :unset} -> {:ok, nil}
      {:error, _} = error -> error
    end
  end

  defp boot_nif do
    if DynamicSrv.Native.loaded?() do
      :ok
    else
      {:error,
       "the NIF of libcluster_dynamic_srv could not be loaded from its priv/native directory: " <>
         "build the package with mix compile (it needs cargo) and keep priv/ in the release"}
    end
  end

  @doc "The distribution listen port for the local node `name`."
  @spec listen_port_please(charlist() | String.t(), charlist() | String.t()) ::
          {:ok, :inet.port_number()} | {:error, String.t()}
  def listen_port_please(name, host) do
    name = to_string(name)

    cond do
      Naming.helper?(name) ->
        {:ok, 0}

      port = dist_port() ->
        {:ok, port}

      boot?() ->
        fatal(Env.dist_port_unset_message("#{name}@#{host}"))

      true ->
        {:error, Env.dist_port_unset_message("#{name}@#{host}")}
    end
  end

  @doc false
  @spec register_node(atom() | charlist(), :inet.port_number()) :: {:ok, integer()}
  def register_node(name, port), do: register_node(name, port, :inet_tcp)

  @doc false
  @spec register_node(atom() | charlist(), :inet.port_number(), atom()) :: {:ok, integer()}
  def register_node(_name, _port, _family), do: {:ok, -1}

  @doc false
  @spec names(term()) :: {:error, :address}
  def names(_host), do: {:error, :address}

  @doc """
  The address, port and distribution version of the node `name@host`.
  Never raises; never waits past the lookup timeout.
  """
  @spec address_please(
          charlist() | String.t(),
          charlist() | String.t() | :inet.ip_address(),
          :inet | :inet6
        ) ::
          {:ok, :inet.ip_address(), :inet.port_number(), 5} | {:error, term()}
  def address_please(name, host, family) do
    name = to_string(name)
    host = host_string(host)

    if local?(name, host) do
      local_answer(family)
    else
      node = name <> "@" <> host

      found =
        case PortBook.fetch_ports(node, family) do
          {:ok, ip, ports} when ip != nil -> {:ok, ip, ports}
          {:ok, nil, ports} -> resolve_address(node, name, host, family, ports)
          {:error, _} = error -> error
          :miss -> resolve_or_last_known(node, name, host, family)
        end

      with {:ok, ip, ports} <- found do
        {:ok, ip, choose_port(node, family, ip, ports), @version}
      end
    end
  catch
    kind, reason -> {:error, {:address_please, kind, reason}}
  end

  @doc false
  @spec port_please(charlist() | String.t(), term()) :: {:port, :inet.port_number(), 5} | :noport
  def port_please(name, host), do: port_please(name, host, :infinity)

  @doc false
  @spec port_please(charlist() | String.t(), term(), timeout()) ::
          {:port, :inet.port_number(), 5} | :noport
  def port_please(name, host, _timeout) do
    case address_please(name, host, family_of_host(host)) do
      {:ok, _ip, port, version} -> {:port, port, version}
      {:error, _} -> :noport
    end
  end

  # A lookup that got no answer (timeout, SERVFAIL, refused, a network
  # error) falls back to the node's last known address and port: a DNS
  # hiccup while the cluster forms must not fail connection attempts, since
  # `global` turns each failed one into a cluster-wide disconnect of that
  # node. An answer that says the node is not there is believed.
  defp resolve_or_last_known(node, name, host, family) do
    case resolve_miss(name, host, family) do
      {:error, reason} = error ->
        case not said_absent?(reason) and PortBook.fetch_stale(node, family) do
          {:ok, ip, ports} -> remember(node, family, {:ok, ip, ports})
          _ -> remember(node, family, error)
        end

      answer ->
        remember(node, family, answer)
    end
  end

  defp said_absent?({:not_in_srv_answer, _}), do: true
  defp said_absent?(reason), do: reason in [:nxdomain, :no_data, :address_family, :no_local_port]

  defp remember(node, family, answer) do
    PortBook.put(node, family, answer, @attempt_ttl)
    answer
  end

  # One port: that one. Several (a node restarted on a new port while its
  # old record lingers): each connection attempt starts from the next port
  # in turn, and takes the first from there that accepts a TCP connection
  # within @probe_timeout, all probed at once. OTP asks twice per attempt:
  # the choice is kept for @attempt_ttl, so both asks get the same port.
  defp choose_port(_node, _family, _ip, [port]), do: port

  defp choose_port(node, family, ip, ports) do
    case Hints.port_choice(node, family) do
      {^ip, port} ->
        if port in ports, do: port, else: new_choice(node, family, ip, ports)

      _ ->
        new_choice(node, family, ip, ports)
    end
  end

  defp new_choice(node, family, ip, ports) do
    turn = rem(Hints.next_turn(node, family), length(ports))
    {passed, from_turn} = Enum.split(ports, turn)
    port = probe(ip, from_turn ++ passed, family)
    Hints.put_port_choice(node, family, {ip, port}, @attempt_ttl)
    port
  end

  # The first port of `order` at `ip` that accepts a TCP connection, all
  # probed at once, each by its own process whose connect gives up after
  # @probe_timeout. The choice is made as soon as the ports before it have
  # refused or timed out. The wait is bounded by twice @probe_timeout (the
  # probes' own timeout, plus room for a machine so loaded that they are
  # scheduled late); then a port that did not refuse is taken over one
  # that did, the turn order deciding. Answers arrive through an alias that
  # is removed when the choice is made, so a late one is dropped, and one
  # that came in just before is flushed: nothing stays in the caller's
  # mailbox (a connection setup process of the kernel).
  defp probe(ip, order, family) do
    reply_to = :erlang.alias()
    deadline = System.monotonic_time(:millisecond) + 2 * @probe_timeout

    for port <- order do
      spawn(fn -> send(reply_to, {reply_to, port, accepts?(ip, port, family)}) end)
    end

    port = collect_probes(reply_to, order, deadline, %{})
    :erlang.unalias(reply_to)
    flush_probes(reply_to)
    port
  end

  defp flush_probes(reply_to) do
    receive do
      {^reply_to, _port, _accepts} -> flush_probes(reply_to)
    after
      0 -> :ok
    end
  end

  defp collect_probes(reply_to, order, deadline, results) do
    case decided(order, results) do
      {:ok, port} ->
        port

      :wait ->
        wait = max(deadline - System.monotonic_time(:millisecond), 0)

        receive do
          {^reply_to, port, accepts} ->
            collect_probes(reply_to, order, deadline, Map.put(results, port, accepts))
        after
          wait -> Enum.find(order, hd(order), &(Map.get(results, &1) != false))
        end
    end
  end

  # The first port in order that accepted, once every port before it has
  # answered no; the turn's port when all answered no.
  defp decided(order, results) do
    Enum.reduce_while(order, {:ok, hd(order)}, fn port, all_refused ->
      case Map.fetch(results, port) do
        {:ok, true} -> {:halt, {:ok, port}}
        {:ok, false} -> {:cont, all_refused}
        :error -> {:halt, :wait}
      end
    end)
  end

  defp accepts?(ip, port, family) do
    case :gen_tcp.connect(ip, port, [family, active: false], @probe_timeout) do
      {:ok, socket} ->
        :gen_tcp.close(socket)
        true

      {:error, _} ->
        false
    end
  end

  # A host that is an IP address (nodes named app@10.0.0.5, as the Dns and
  # Udp providers produce) needs no DNS: the port book or, failing that,
  # this node's own ERL_DIST_PORT (nodes of such a cluster share one port).
  defp resolve_miss(name, host, family) do
    case :inet.parse_strict_address(String.to_charlist(host)) do
      {:ok, ip} -> ip_host(ip, family)
      {:error, _} -> resolve(name, host, family)
    end
  end

  defp ip_host(ip, family) do
    cond do
      PortBook.family_of(ip) != family -> {:error, :address_family}
      port = dist_port() -> {:ok, ip, [port]}
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
  # records whose target is this node, else of its first record; without
  # one, the service's answer must have records whose target is this node.
  # Every record of the node counts (a restarted node may be listed on its
  # old port and its new one); a port-0 record is no target. Which target
  # is which node is DynamicSrv.Naming's rule, as for the strategy.
  defp port_records({:ok, records}, name, host) when is_list(records) do
    case Enum.reject(records, &(&1.port == 0)) do
      [] ->
        port_records({:error, :no_data}, name, host)

      [first | _] = records ->
        case own_records(records, name, host) do
          [] -> {:ok, [first]}
          own -> {:ok, own}
        end
    end
  end

  defp port_records({:error, reason}, name, host) when reason in [:nxdomain, :no_data] do
    with {:ok, records} <- Resolver.lookup_srv(host) do
      records = Enum.reject(records, &(&1.port == 0))
      book_service(records, host)

      case own_records(records, name, host) do
        [] -> {:error, {:not_in_srv_answer, host}}
        own -> {:ok, own}
      end
    end
  end

  defp port_records({:error, _} = error, _name, _host), do: error

  defp address({:ok, [%{address: ip} | _]}, _records, _family), do: {:ok, ip}

  defp address(answer, records, family) do
    case Enum.find(Enum.flat_map(records, & &1.addresses), &(PortBook.family_of(&1) == family)) do
      nil -> with({:ok, []} <- answer, do: {:error, :no_data})
      ip -> {:ok, ip}
    end
  end

  # The service's answer lists the host's other nodes too: book them all
  # (by name, without creating atoms), so connecting to them needs no DNS.
  defp book_service(records, host) do
    records
    |> named(host)
    |> Enum.group_by(fn {_record, node} -> node end, fn {record, _node} -> record end)
    |> Enum.each(fn {node, own} ->
      ports = Enum.map(own, & &1.port)
      addresses = Enum.flat_map(own, & &1.addresses)
      PortBook.put_srv(node, ports, addresses, @service_book_ttl)
    end)
  end

  # The records whose target names the node `name@host` (its label compared
  # case-insensitively).
  defp own_records(records, name, host) do
    own = String.downcase(name) <> "@" <> host
    for {record, ^own} <- named(records, host), do: record
  end

  # Each record with the node its target names under `host`; records whose
  # target names no node are left out.
  defp named(records, host) do
    case Naming.node_names(Enum.map(records, & &1.target), host) do
      {:ok, names} -> for {record, {:ok, node}} <- Enum.zip(records, names), do: {record, node}
      {:error, _} -> []
    end
  end

  defp family_of_host(host) when is_tuple(host), do: PortBook.family_of(host)

  defp family_of_host(host) do
    case :inet.parse_strict_address(to_charlist(host)) do
      {:ok, ip} -> PortBook.family_of(ip)
      {:error, _} -> :inet
    end
  end

  defp host_string(host) when is_tuple(host), do: to_string(:inet.ntoa(host))
  defp host_string(host), do: to_string(host)

  # The local node, or a release helper of it (rem-XXXX-<name>, rpc-XXXX-<name>)
  # asking for it.
  defp local?(name, host) do
    case String.split(Atom.to_string(node()), "@", parts: 2) do
      [^name, ^host] -> true
      [local, ^host] -> Naming.helper_of(local) == name
      _ -> false
    end
  end

  defp local_answer(family) do
    case dist_port() do
      nil -> {:error, :no_local_port}
      port -> {:ok, loopback(family), port, @version}
    end
  end

  defp loopback(:inet), do: {127, 0, 0, 1}
  defp loopback(:inet6), do: {0, 0, 0, 0, 0, 0, 0, 1}

  defp dist_port do
    case :persistent_term.get(@config_key, :unread) do
      :unread ->
        case Env.dist_port() do
          {:ok, port} -> port
          {:error, _} -> nil
        end

      port ->
        port
    end
  end

  # Before standard_error exists: write straight to file descriptor 2.
  defp fatal(message) do
    port = :erlang.open_port({:fd, 2, 2}, [:out, :binary])
    :erlang.port_command(port, ["DynamicSrv.Epmd: ", message, "\n"])
    :erlang.halt(1)
  end
end
