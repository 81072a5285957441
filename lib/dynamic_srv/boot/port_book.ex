defmodule DynamicSrv.PortBook do
  @moduledoc """
  The ports and addresses of nodes by node name, so that `DynamicSrv.Epmd`
  answers without asking DNS again.

  Writers: the SRV poll (the strategy's and `DynamicSrv.Via.Srv`'s: the ports, and the target's
  addresses when the server sent them in the additional section), the
  List and UDP providers, and `DynamicSrv.Epmd` itself, which keeps each
  DNS answer for a short while so that one connection attempt costs one
  round of DNS although OTP asks for the address twice.

  An entry holds every port the answer gave the node, in ascending order: a
  node restarted on a new port while its old registration lingers has two
  SRV records, and `DynamicSrv.Epmd` chooses among them on each connection
  attempt (see its "Several ports" section).

  Entries expire; a miss falls back to DNS, and when DNS does not answer,
  to the last answer known (`fetch_stale/2`). When the node does not use
  `DynamicSrv.Epmd`, there is no table and writes are no-ops.

  ## The owner

  The book's table, and the table of the epmd module's port choices, are owned by one plain process
  registered as `DynamicSrv.PortBook`, started unlinked by
  `DynamicSrv.Epmd.start_link/0`: nothing supervises it and nothing depends
  on it. It traps exits and ignores every message but its own sweep timer
  (every ten seconds, it deletes entries that expired more than ten
  minutes ago); calls (`GenServer.call/3`) and `:sys` requests get
  `{:error, :not_supported}`. If it is killed anyway (`:kill`) or a table
  is deleted, the next write starts a new owner, and reads meanwhile miss.
  """

  alias DynamicSrv.PortBook.Tables

  @tables [__MODULE__, DynamicSrv.Hints]
  @sweep_every 10_000

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
  def ensure_started do
    Tables.enable()
    if missing_table?(), do: start_owner()
    :ok
  end

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

  @doc false
  @spec missing_table?() :: boolean()
  def missing_table?, do: Enum.any?(@tables, &(:ets.whereis(&1) == :undefined))

  # Starts an owner and waits until it has made its tables. Creating a named
  # table is the lock: of two owners started at once, the second fails to
  # create it and exits, and the tables of the first are there by then.
  @doc false
  @spec start_owner() :: :ok
  def start_owner do
    caller = self()
    {pid, ref} = spawn_monitor(fn -> init_owner(caller) end)

    receive do
      {^pid, :tables_ready} -> Process.demonitor(ref, [:flush])
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    end

    :ok
  end

  # A table lost alone (deleted from outside) is made again by a new owner;
  # the one still there stays with its owner, which sweeps it.
  defp init_owner(caller) do
    Process.flag(:trap_exit, true)

    for table <- @tables,
        :ets.whereis(table) == :undefined,
        do: :ets.new(table, [:named_table, :public, :set, read_concurrency: true])

    register()
    send(caller, {self(), :tables_ready})
    owner_loop(schedule_sweep())
  end

  defp owner_loop(timer) do
    receive do
      {:timeout, ^timer, :sweep} ->
        sweep()
        owner_loop(schedule_sweep())

      {:"$gen_call", {pid, _} = from, _request} when is_pid(pid) ->
        refuse(from)
        owner_loop(timer)

      {:system, {pid, _} = from, _request} when is_pid(pid) ->
        refuse(from)
        owner_loop(timer)

      _other ->
        owner_loop(timer)
    end
  end

  defp refuse(from) do
    GenServer.reply(from, {:error, :not_supported})
  catch
    _, _ -> :ok
  end

  defp schedule_sweep, do: :erlang.start_timer(@sweep_every, self(), :sweep)

  # The tables are public, so they may have been deleted from outside and a
  # write may have started a new owner meanwhile: an owner left without any
  # table leaves, and one that owns a table takes the name when it is free.
  defp sweep do
    own = Enum.filter(@tables, &(:ets.info(&1, :owner) == self()))
    if own == [], do: exit(:normal)
    register()
    oldest = Tables.now() - Tables.stale_for()

    for table <- own,
        do: :ets.select_delete(table, [{{:_, :_, :"$1"}, [{:"=<", :"$1", oldest}], [true]}])
  end

  defp register do
    if Process.whereis(__MODULE__) == nil, do: Process.register(self(), __MODULE__)
  rescue
    ArgumentError -> false
  end
end
