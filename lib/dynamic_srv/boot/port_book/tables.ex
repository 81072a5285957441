defmodule DynamicSrv.PortBook.Tables do
  @moduledoc """
  The tables of short-lived entries that `DynamicSrv.Epmd` reads while the
  node connects (`DynamicSrv.PortBook` and `DynamicSrv.Hints`), and the one
  plain process that owns them.

  Each entry is `{key, value, expires_at}` (monotonic ms); reads see only
  live entries, and a sweep every ten seconds deletes entries that expired
  more than ten minutes ago (`stale_for/0`: the port book's last-known
  answers live that long).

  The owner is registered as `DynamicSrv.PortBook` and started unlinked by
  `DynamicSrv.Epmd.start_link/0`: nothing supervises it and nothing depends
  on it. It traps exits and ignores every message but its own sweep timer;
  calls (`GenServer.call/3`) and `:sys` requests get
  `{:error, :not_supported}`. If it is killed anyway (`:kill`) or a table is
  deleted, the next write starts a new owner, and reads meanwhile miss.
  When the node does not use `DynamicSrv.Epmd`, there are no tables and
  writes are no-ops.
  """

  @tables [DynamicSrv.PortBook, DynamicSrv.Hints]
  @owner_name DynamicSrv.PortBook
  @sweep_every 10_000
  @stale_for 600_000
  @enabled_key {__MODULE__, :enabled}

  @type table :: DynamicSrv.PortBook | DynamicSrv.Hints

  @doc """
  Creates the tables and their owner unless they exist, and enables them
  for the life of the VM: from then on a write recreates lost tables.
  """
  @spec ensure_started() :: :ok
  def ensure_started do
    :persistent_term.put(@enabled_key, true)
    if missing_table?(), do: start_owner()
    :ok
  end

  @doc "Whether the tables are in use (this node runs `DynamicSrv.Epmd`)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@enabled_key, false)

  @doc "How long an expired entry is kept for `stale/2`, in ms."
  @spec stale_for() :: pos_integer()
  def stale_for, do: @stale_for

  @doc "Writes `value` under `key` for `ttl_ms`, when the tables are in use."
  @spec put(table(), term(), term(), non_neg_integer()) :: :ok
  def put(table, key, value, ttl_ms) do
    if enabled?() do
      if missing_table?(), do: start_owner()
      :ets.insert(table, {key, value, now() + ttl_ms})
    end

    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc "The live value under `key`, or `:miss`."
  @spec get(table(), term()) :: term() | :miss
  def get(table, key) do
    now = now()

    case :ets.lookup(table, key) do
      [{_, value, expires}] when expires > now -> value
      _ -> :miss
    end
  rescue
    ArgumentError -> :miss
  end

  @doc """
  The value under `key` with its expiry, also after it expired (until the
  sweep removes it), or `:miss`.
  """
  @spec get_with_expiry(table(), term()) :: {term(), integer()} | :miss
  def get_with_expiry(table, key) do
    case :ets.lookup(table, key) do
      [{_, value, expires}] -> {value, expires}
      [] -> :miss
    end
  rescue
    ArgumentError -> :miss
  end

  @doc "Replaces the value under `key`, keeping its expiry."
  @spec replace(table(), term(), term(), integer()) :: :ok
  def replace(table, key, value, expires) do
    :ets.insert(table, {key, value, expires})
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc """
  Adds one to the counter under `key` and returns its value before: 0, 1,
  2, ... (kept `stale_for/0`); 0 when the tables are not in use.
  """
  @spec count(table(), term()) :: non_neg_integer()
  def count(table, key) do
    if enabled?() do
      if missing_table?(), do: start_owner()
      :ets.update_counter(table, key, {2, 1}, {key, -1, now() + @stale_for})
    else
      0
    end
  rescue
    ArgumentError -> 0
  end

  @doc "The monotonic clock of the entries, in ms."
  @spec now() :: integer()
  def now, do: System.monotonic_time(:millisecond)

  defp missing_table?, do: Enum.any?(@tables, &(:ets.whereis(&1) == :undefined))

  # Starts an owner and waits until it has made its tables. Creating a named
  # table is the lock: of two owners started at once, the second fails to
  # create it and exits, and the tables of the first are there by then.
  defp start_owner do
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
    oldest = now() - @stale_for

    for table <- own,
        do: :ets.select_delete(table, [{{:_, :_, :"$1"}, [{:"=<", :"$1", oldest}], [true]}])
  end

  defp register do
    if Process.whereis(@owner_name) == nil, do: Process.register(self(), @owner_name)
  rescue
    ArgumentError -> false
  end
end
