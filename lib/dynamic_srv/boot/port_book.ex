defmodule DynamicSrv.PortBook do
  @moduledoc """
  A node-name to address and port book that lets `DynamicSrv.Epmd` answer
  without asking DNS again.

  Two writers fill it: the membership engine, from each successful SRV poll
  (the ports, and the target's addresses when the server sent them in the
  additional section), and `DynamicSrv.Epmd` itself, which keeps each DNS
  answer for a short while so that one connection attempt costs one round of
  DNS although OTP asks for the address twice.

  An entry holds every port the answer gave the node, in ascending order: a
  node restarted on a new port while its old registration lingers has two
  SRV records, and `DynamicSrv.Epmd` chooses among them on each connection
  attempt (see its "Several ports" section).

  Entries expire; a miss falls back to DNS, and when DNS does not answer,
  to the last answer known (`fetch_stale/2`). The table is public and owned by
  a plain process, registered as `DynamicSrv.PortBook`, that
  `DynamicSrv.Epmd.start_link/0` starts unlinked: nothing supervises it and
  nothing depends on it. It traps exits and ignores every message but its
  own sweep timer; calls (`GenServer.call/3`) and `:sys` requests get
  `{:error, :not_supported}`. If it is killed anyway (`:kill`) or its table
  is deleted, the next write starts a new one, and lookups meanwhile fall
  back to DNS. When the node does not use `DynamicSrv.Epmd`, there is no
  table and writes are no-ops.
  """

  @table __MODULE__
  @sweep_every 10_000
  # How long an expired answer is kept as the last known one: see
  # fetch_stale/2.
  @stale_for 600_000
  @enabled_key {__MODULE__, :enabled}

  @type family :: :inet | :inet6
  @type answer ::
          {:ok, :inet.ip_address() | nil, :inet.port_number() | [:inet.port_number(), ...]}
          | {:error, term()}

  @doc """
  Creates the table and its owner unless they exist, and enables the book
  for the life of the VM: from then on a write recreates a lost table.
  """
  @spec ensure_started() :: :ok
  def ensure_started do
    :persistent_term.put(@enabled_key, true)

    if :ets.whereis(@table) == :undefined, do: start_owner()
    :ok
  end

  @doc """
  Records `answer` for the node `name` (a `"name@host"` string) and
  `family`, valid for `ttl_ms`. An address of `nil` records the port only;
  the port may be a list of the node's ports.
  """
  @spec put(String.t(), family(), answer(), non_neg_integer()) :: :ok
  def put(name, family, {:ok, address, port}, ttl_ms) do
    insert({{name, family}, {:ok, address, port_list(port)}, now() + ttl_ms})
  end

  def put(name, family, {:error, _} = error, ttl_ms) do
    insert({{name, family}, error, now() + ttl_ms})
  end

  defp port_list(ports) when is_list(ports), do: ports |> Enum.uniq() |> Enum.sort()
  defp port_list(port), do: [port]

  @doc """
  Records what an SRV answer says about the node `name`: its port (or all
  its ports, when the answer has several records for it) and, for each
  family, the address the server sent, else the address already known for
  that node (an answer cut short leaves some targets without one).
  """
  @spec put_srv(
          String.t(),
          :inet.port_number() | [:inet.port_number(), ...],
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
  AAAA lookup), keeping its port and expiry. Returns `false` without a live
  entry.
  """
  @spec put_address(String.t(), family(), :inet.ip_address()) :: boolean()
  def put_address(name, family, address) do
    case :ets.lookup(@table, {name, family}) do
      [{key, {:ok, _, ports}, expires}] ->
        :ets.insert(@table, {key, {:ok, address, ports}, expires})

      _ ->
        false
    end
  rescue
    ArgumentError -> false
  end

  @doc "Whether the live entry of `name` lacks an address of `family`."
  @spec missing_address?(String.t(), family()) :: boolean()
  def missing_address?(name, family) do
    case fetch(name, family) do
      {:ok, address, _} -> address == nil
      _ -> true
    end
  end

  defp known_address(name, family) do
    now = now()

    case :ets.lookup(@table, {name, family}) do
      [{_, {:ok, address, _}, expires}] when expires > now -> address
      _ -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc "Whether the book is in use (this node runs `DynamicSrv.Epmd`)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@enabled_key, false)

  @doc """
  Marks `key` for `ttl_ms`: a fact worth remembering for a while, e.g. that
  a host has no per-node SRV records (`{host, :no_node_srv}`).
  """
  @spec mark(term(), non_neg_integer()) :: :ok
  def mark(key, ttl_ms) do
    insert({{:mark, key}, true, now() + ttl_ms})
  end

  @spec marked?(term()) :: boolean()
  def marked?(key), do: lookup({:mark, key}) == true

  @doc "Keeps `value` under `key` for `ttl_ms`; `noted/1` reads it back."
  @spec note(term(), term(), non_neg_integer()) :: :ok
  def note(key, value, ttl_ms), do: insert({{:note, key}, value, now() + ttl_ms})

  @doc "The live value kept under `key` by `note/3`, or `:miss`."
  @spec noted(term()) :: term() | :miss
  def noted(key), do: lookup({:note, key})

  @doc """
  Counts the turns taken on `key` (e.g. a node's connection attempts) and
  returns the count before this one: 0, 1, 2, ... Returns 0 when the book
  is not in use.
  """
  @spec next_turn(term()) :: non_neg_integer()
  def next_turn(key) do
    if enabled?() do
      if :ets.whereis(@table) == :undefined, do: start_owner()
      # Kept as long as a stale answer; the sweep starts it over after that.
      default = {{:turn, key}, -1, now() + @stale_for}
      :ets.update_counter(@table, {:turn, key}, {2, 1}, default)
    else
      0
    end
  rescue
    ArgumentError -> 0
  end

  @doc """
  The live entry for `name` and `family` with its first port, or `:miss`
  (`fetch_ports/2` gives all of them).
  """
  @spec fetch(String.t(), family()) ::
          {:ok, :inet.ip_address() | nil, :inet.port_number()} | {:error, term()} | :miss
  def fetch(name, family) do
    case fetch_ports(name, family) do
      {:ok, address, [port | _]} -> {:ok, address, port}
      other -> other
    end
  end

  @doc "The live entry for `name` and `family` with all its ports, or `:miss`."
  @spec fetch_ports(String.t(), family()) ::
          {:ok, :inet.ip_address() | nil, [:inet.port_number(), ...]} | {:error, term()} | :miss
  def fetch_ports(name, family), do: lookup({name, family})

  @doc """
  The last address and ports known for `name` and `family`, also when the
  entry has expired (within ten minutes), or `:miss`. For when DNS does not
  answer: a node's address rarely changes, and a wrong one only fails the
  connection attempt that a failed lookup would fail anyway.
  """
  @spec fetch_stale(String.t(), family()) ::
          {:ok, :inet.ip_address(), [:inet.port_number(), ...]} | :miss
  def fetch_stale(name, family) do
    oldest = now() - @stale_for

    case :ets.lookup(@table, {name, family}) do
      [{_, {:ok, address, ports}, expires}] when address != nil and expires > oldest ->
        {:ok, address, ports}

      _ ->
        :miss
    end
  rescue
    ArgumentError -> :miss
  end

  defp lookup(key) do
    now = now()

    case :ets.lookup(@table, key) do
      [{_, value, expires}] when expires > now -> value
      _ -> :miss
    end
  rescue
    ArgumentError -> :miss
  end

  @spec family_of(:inet.ip_address()) :: family()
  def family_of(address) when tuple_size(address) == 4, do: :inet
  def family_of(address) when tuple_size(address) == 8, do: :inet6

  # Writes go to the table when the book is enabled; a table lost with its
  # owner is created again first.
  defp insert(entry) do
    if :persistent_term.get(@enabled_key, false) do
      if :ets.whereis(@table) == :undefined, do: start_owner()
      :ets.insert(@table, entry)
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  # Starts the owner and waits until the table exists. Creating the named
  # table is the lock: of two owners started at once, the second fails to
  # create it and exits, and the table of the first is there by then.
  defp start_owner do
    caller = self()
    {pid, ref} = spawn_monitor(fn -> init_owner(caller) end)

    receive do
      {^pid, :table_ready} -> Process.demonitor(ref, [:flush])
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    end

    :ok
  end

  defp init_owner(caller) do
    Process.flag(:trap_exit, true)
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    register()
    send(caller, {self(), :table_ready})
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

  # The table is public, so it may have been deleted from outside and a
  # write may have started a new owner meanwhile: an owner without its table
  # leaves, and the one that owns the table takes the name when it is free.
  defp sweep do
    if :ets.info(@table, :owner) != self(), do: exit(:normal)
    register()
    oldest = now() - @stale_for
    :ets.select_delete(@table, [{{:_, :_, :"$1"}, [{:"=<", :"$1", oldest}], [true]}])
  end

  defp register do
    if Process.whereis(__MODULE__) == nil, do: Process.register(self(), __MODULE__)
  rescue
    ArgumentError -> false
  end

  defp now, do: System.monotonic_time(:millisecond)
end
