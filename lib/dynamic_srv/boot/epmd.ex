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
     minutes old (`DynamicSrv.PortBook.fetch_stale/2`), else what up to
     three connected nodes know of it (asked at once, 1 s at most): while
     a cluster forms, `global` connects each node to the nodes its peers
     know, often before its own DNS poll has listed them, and turns every
     failed connection attempt into a cluster-wide disconnect of that
     node. An answer that says the node is not there (NXDOMAIN, no data,
     not in the service's answer) is believed.

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

  alias DynamicSrv.{Env, Naming, PortBook}
  alias DynamicSrv.Epmd.{Lookup, PortChoice}

  @version 5
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
    if DynamicSrv.Resolver.loaded?() do
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
      with {:ok, ip, ports} <- Lookup.find(name, host, family, dist_port()) do
        {:ok, ip, PortChoice.choose(name <> "@" <> host, family, ip, ports), @version}
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
