defmodule DynamicSrv.PortBook do
  @moduledoc """
  The ports and addresses of nodes by node name, so that `DynamicSrv.Epmd`
  answers without asking DNS again.

  Writers: the SRV poll (`DynamicSrv.SrvPoll`: the ports, and the target's
  addresses when the server sent them in the additional section), the
  List and UDP providers, and `DynamicSrv.Epmd` itself, which keeps each
  DNS answer for a short while so that one connection attempt costs one
  round of DNS although OTP asks for the address twice.

  An entry holds every port the answer gave the node, in ascending order: a
  node restarted on a new port while its old registration lingers has two
  SRV records, and `DynamicSrv.Epmd` chooses among them on each connection
  attempt (see its "Several ports" section).

  Entries expire; a miss falls back to DNS, and when DNS does not answer,
  to the last answer known (`fetch_stale/2`). The table and the process
  that owns it are `DynamicSrv.PortBook.Tables`': nothing depends on that
  process, and a lost table is made again by the next write. When the node
  does not use `DynamicSrv.Epmd`, there is no table and writes are no-ops.
  """

  alias DynamicSrv.PortBook.Tables

  @type node_name :: String.t()
  @type family :: :inet | :inet6
  @type ports :: [:inet.port_number(), ...]
  @type answer ::
          {:ok, :inet.ip_address() | nil, :inet.port_number() | ports()} | {:error, term()}

  @doc """
  Creates the table and its owner unless they exist, and enables the book
  for the life of the VM: from then on a write recreates a lost table.
  """
  @spec ensure_started() :: :ok
  defdelegate ensure_started, to: Tables

  @doc "Whether the book is in use (this node runs `DynamicSrv.Epmd`)."
  @spec enabled?() :: boolean()
  defdelegate enabled?, to: Tables

  @doc """
  Records `answer` for the node `name` (`"name@host"`) and `family`, valid
  for `ttl_ms`: its address (`nil` for the port only) and port or ports,
  or the error a lookup gave.
  """
  @spec put(node_name(), family(), answer(), non_neg_integer()) :: :ok
  def put(name, family, {:ok, address, port}, ttl_ms),
    do: Tables.put(__MODULE__, {name, family}, {:ok, address, port_list(port)}, ttl_ms)

  def put(name, family, {:error, _} = error, ttl_ms),
    do: Tables.put(__MODULE__, {name, family}, error, ttl_ms)

  defp port_list(ports) when is_list(ports), do: ports |> Enum.uniq() |> Enum.sort()
  defp port_list(port), do: [port]

  @doc """
  Records what an SRV answer says about the node `name`: its port (or all
  its ports, when the answer has several records for it) and, for each
  family, the address the server sent, else the address already known for
  that node (an answer cut short leaves some targets without one).
  """
  @spec put_srv(
          node_name(),
          :inet.port_number() | ports(),
          [:inet.ip_address()],
          non_neg_integer()
        ) :: :ok
  def put_srv(name, ports, addresses, ttl_ms) do
    for family <- [:inet, :inet6] do
      address = Enum.find(addresses, &(family_of(&1) == family)) || known_address(name, family)
      put(name, family, {:ok, address, ports}, ttl_ms)
    end

    :ok
  end

  @doc """
  Adds `address` to the live entry of `name` and `family` (found by an A or
  AAAA lookup), keeping its ports and expiry. Returns `false` without a
  live entry.
  """
  @spec put_address(node_name(), family(), :inet.ip_address()) :: boolean()
  def put_address(name, family, address) do
    with {{:ok, _, ports}, expires} <- Tables.get_with_expiry(__MODULE__, {name, family}),
         true <- expires > Tables.now() do
      Tables.replace(__MODULE__, {name, family}, {:ok, address, ports}, expires)
      true
    else
      _ -> false
    end
  end

  @doc "Whether the live entry of `name` lacks an address of `family`."
  @spec missing_address?(node_name(), family()) :: boolean()
  def missing_address?(name, family) do
    case fetch_ports(name, family) do
      {:ok, address, _} -> address == nil
      _ -> true
    end
  end

  defp known_address(name, family) do
    case fetch_ports(name, family) do
      {:ok, address, _} -> address
      _ -> nil
    end
  end

  @doc "The live entry for `name` and `family` with all its ports, or `:miss`."
  @spec fetch_ports(node_name(), family()) ::
          {:ok, :inet.ip_address() | nil, ports()} | {:error, term()} | :miss
  def fetch_ports(name, family), do: Tables.get(__MODULE__, {name, family})

  @doc """
  The last address and ports known for `name` and `family`, also when the
  entry has expired (within ten minutes), or `:miss`. For when DNS does not
  answer: a node's address rarely changes, and a wrong one only fails the
  connection attempt that a failed lookup would fail anyway.
  """
  @spec fetch_stale(node_name(), family()) :: {:ok, :inet.ip_address(), ports()} | :miss
  def fetch_stale(name, family) do
    oldest = Tables.now() - Tables.stale_for()

    case Tables.get_with_expiry(__MODULE__, {name, family}) do
      {{:ok, address, ports}, expires} when address != nil and expires > oldest ->
        {:ok, address, ports}

      _ ->
        :miss
    end
  end

  @doc "The family of an address tuple."
  @spec family_of(:inet.ip_address()) :: family()
  def family_of(address) when tuple_size(address) == 4, do: :inet
  def family_of(address) when tuple_size(address) == 8, do: :inet6
end
