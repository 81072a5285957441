defmodule DynamicSrv.PortBook.Tables do
  @moduledoc false
  # The tables of short-lived entries that `DynamicSrv.Epmd` reads while the
  # node connects (the port book's and `DynamicSrv.Hints`'), whose owner is
  # `DynamicSrv.PortBook`'s process. Each entry is `{key, value,
  # expires_at}` (monotonic ms); reads see only live entries. Writes and
  # counts restore lost tables (a new owner) while the tables are enabled;
  # when the node does not use `DynamicSrv.Epmd` they are no-ops.

  @stale_for 600_000
  @enabled_key {__MODULE__, :enabled}

  @type table :: DynamicSrv.PortBook | DynamicSrv.Hints

  @doc "Enables the tables for the life of the VM."
  @spec enable() :: :ok
  def enable, do: :persistent_term.put(@enabled_key, true)

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
      restore()
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
      restore()
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

  defp restore do
    if DynamicSrv.PortBook.missing_table?(), do: DynamicSrv.PortBook.start_owner()
  end
end
